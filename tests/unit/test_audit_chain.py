"""The audit hash chain (server/store/audit.py): what `verify` says about an intact chain
and about each kind of tampering. Pure: chains are built in memory."""
from __future__ import annotations

from dataclasses import replace

import pytest

from server.store.audit import (GENESIS, AuditRecord, canonical_detail, expected_hash, row_hash,
                                verify)


def make_chain(n: int) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    prev = GENESIS
    for seq in range(1, n + 1):
        at, detail = f"2026-01-01T00:00:{seq:02d}+00:00", canonical_detail({"i": seq})
        h = row_hash(seq, at, "certificate.issued", "acme:a", f"s{seq}", "n-1", detail, prev)
        out.append(AuditRecord(seq, at, "certificate.issued", "acme:a", f"s{seq}", "n-1", detail,
                               prev, h))
        prev = h
    return out


def rehash(r: AuditRecord, prev: str | None = None) -> AuditRecord:
    """What a careful forger does: make the row consistent with itself again."""
    r = replace(r, prev_hash=prev if prev is not None else r.prev_hash)
    return replace(r, hash=expected_hash(r))


def messages(records: list[AuditRecord], high_water: int | None = None,
             mirror: dict[int, str] | None = None) -> list[str]:
    top = high_water if high_water is not None else max((r.seq for r in records), default=0)
    return [p.message for p in verify(records, top, mirror)[2]]


def test_intact_chain() -> None:
    chain = make_chain(5)
    assert verify(chain, 5) == (5, chain[-1].hash, [])
    assert chain[0].prev_hash == GENESIS == "0" * 64
    assert verify([], 0) == (0, GENESIS, [])


def test_canonical_detail_ignores_key_order_and_hash_covers_every_field() -> None:
    assert canonical_detail({"b": 1, "a": [1, 2]}) == canonical_detail({"a": [1, 2], "b": 1}) \
        == '{"a":[1,2],"b":1}'
    base = ("at", "ev", "actor", "subj", "node", "{}", GENESIS)
    h = row_hash(1, *base)
    for i in range(len(base)):
        changed = list(base)
        changed[i] = (changed[i] or "") + "x"
        assert row_hash(1, *changed) != h  # type: ignore[arg-type]
    assert row_hash(2, *base) != h
    assert row_hash(1, "at", "ev", "actor", "subj", None, "{}", GENESIS) != h
    # JSON framing: moving a character across a field boundary changes the hash.
    assert row_hash(1, "a", "tev", *base[2:]) != row_hash(1, "at", "ev", *base[2:])


def test_edited_row_is_named() -> None:
    chain = make_chain(5)
    chain[2] = replace(chain[2], detail='{"i":99}')
    assert messages(chain) == [f"row 3 (certificate.issued at {chain[2].at}): hash mismatch "
                               "— the row was edited"]


def test_deleted_row_names_the_gap() -> None:
    chain = make_chain(6)
    del chain[2:4]
    assert messages(chain) == ["rows 3-4 missing — deleted between 2 and 5"]
    one = make_chain(3)
    del one[1]
    assert messages(one) == ["row 2 missing — deleted between 1 and 3"]


def test_deleted_first_and_last_rows() -> None:
    chain = make_chain(4)
    assert messages(chain[1:]) == ["row 1 missing — deleted before 2"]
    assert messages(chain[:2], high_water=4) == [
        "rows 3-4 missing — deleted after row 2 (the log went up to 4)"]
    assert messages([], high_water=4) == [
        "rows 1-4 missing — every row was deleted (the log went up to 4)"]


def test_rehashed_edit_breaks_the_next_link() -> None:
    chain = make_chain(5)
    chain[1] = rehash(replace(chain[1], actor="cli:mallory"))
    assert messages(chain) == [f"row 3 (certificate.issued at {chain[2].at}): prev_hash does not "
                               "match row 2's hash — row 2 was rewritten or rows were reordered"]


def test_reordered_rows() -> None:
    chain = make_chain(5)
    a, b = chain[1], chain[2]
    chain[1], chain[2] = replace(b, seq=2), replace(a, seq=3)  # contents swapped between seqs
    found = messages(chain)
    assert found[0].startswith("row 2 (") and "edited or moved" in found[0]
    assert found[1].startswith("row 3 (")


def test_full_rewrite_only_the_mirror_catches() -> None:
    chain = make_chain(4)
    mirror = {r.seq: r.hash for r in chain}
    prev = chain[0].hash
    for i in range(1, 4):
        chain[i] = rehash(replace(chain[i], subject="forged"), prev)
        prev = chain[i].hash
    assert messages(chain) == []
    assert messages(chain, mirror=mirror)[0].startswith("row 2 (")
    assert "mirror" in messages(chain, mirror=mirror)[0]


def test_rows_in_the_mirror_beyond_the_database() -> None:
    chain = make_chain(3)
    mirror = {r.seq: r.hash for r in chain} | {4: "f" * 64, 5: "e" * 64}
    assert messages(chain, mirror=mirror) == ["row 5 is in the mirror file but not in the database"]


@pytest.mark.parametrize("detail,expected", [('{"a":1}', {"a": 1}), ("[1]", {"_value": [1]}),
                                             ("not json", {"_raw": "not json"})])
def test_detail_of_a_tampered_row_still_reads(detail: str, expected: object) -> None:
    assert replace(make_chain(1)[0], detail=detail).detail_obj == expected
