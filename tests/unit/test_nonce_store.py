"""NonceStore: single use, expiry by an injected clock, bounded in number."""
from __future__ import annotations

import base64

from server.api.nonces import NonceStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_nonce_is_good_once() -> None:
    store = NonceStore(ttl=60, max_nonces=10, clock=Clock())
    n = store.issue()
    assert store.redeem(n) is True
    assert store.redeem(n) is False


def test_unknown_nonce_is_refused() -> None:
    store = NonceStore(ttl=60, max_nonces=10, clock=Clock())
    store.issue()
    assert store.redeem("never-issued") is False
    assert len(store) == 1


def test_nonces_are_base64url_and_distinct() -> None:
    store = NonceStore(ttl=60, max_nonces=1000, clock=Clock())
    nonces = [store.issue() for _ in range(200)]
    assert len(set(nonces)) == 200
    for n in nonces:
        assert "=" not in n and "+" not in n and "/" not in n
        assert len(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))) == 16


def test_nonce_expires_after_ttl() -> None:
    clock = Clock()
    store = NonceStore(ttl=60, max_nonces=10, clock=clock)
    early, late = store.issue(), store.issue()
    clock.now += 59.9
    assert store.redeem(early) is True
    clock.now += 0.1  # exactly ttl after issue: expired
    assert store.redeem(late) is False


def test_expired_nonces_are_dropped_on_issue() -> None:
    clock = Clock()
    store = NonceStore(ttl=60, max_nonces=10, clock=clock)
    for _ in range(5):
        store.issue()
    clock.now += 61
    fresh = store.issue()
    assert len(store) == 1
    assert store.redeem(fresh) is True


def test_bound_evicts_the_oldest() -> None:
    clock = Clock()
    store = NonceStore(ttl=60, max_nonces=3, clock=clock)
    nonces = []
    for _ in range(5):
        nonces.append(store.issue())
        clock.now += 1
    assert len(store) == 3
    assert store.redeem(nonces[0]) is False
    assert store.redeem(nonces[1]) is False
    assert [store.redeem(n) for n in nonces[2:]] == [True, True, True]
    assert len(store) == 0
