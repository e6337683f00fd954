"""The data path's shortcuts give the same answers as the general path.

Request heads that arrive whole in one read are sorted from their raw bytes (and the result is
reused while a connection repeats the same fields); response heads are always sorted from the
raw bytes (and reused while an upstream connection repeats them). These tests drive both paths
over real TLS and compare what the upstream / the client sees.
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import httptools
import pytest
from support.gateway_harness import ClientCert, Harness, Pki, start_gateway

from gateway.http1 import DROP_PREFIXES, HOP_BY_HOP, REQUEST_DROP, Head

SPOOFED = (b"X-Forwarded-Client-Cert: Hash=00;URI=spiffe://evil/node/admin\r\n"
           b"X-Nodetrust-Node-Id: admin\r\nX-Forwarded-For: 10.9.9.9\r\n"
           b"Proxy-Authorization: Basic eA==\r\nConnection: keep-alive, X-Private-Hop\r\n"
           b"X-Private-Hop: secret\r\nTE: trailers\r\nX-Kept:  yes \t\r\n")


class Raw:
    """One TLS connection, bytes written exactly as given (blocking; run in a thread)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                    server_hostname="127.0.0.1")
        self.buf = b""

    def send(self, *parts: bytes, pause: float = 0.0) -> None:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)  # wait-ok: separate TLS records, separate reads on the gateway
            self.sock.sendall(part)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if fields.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self.buf += self._recv()
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line, 16)
                while len(self.buf) < size + 2:
                    self.buf += self._recv()
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    return status, fields, body
        length = int(fields.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, fields, body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        return chunk

    def close(self) -> None:
        self.sock.close()


def upstream_view(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def assert_clean(seen: dict[str, list[str]]) -> None:
    assert seen["x-nodetrust-node-id"] == ["node-1"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert not seen["x-forwarded-client-cert"][0].startswith("Hash=00")
    for hop in ("proxy-authorization", "x-private-hop", "te", "connection"):
        assert hop not in seen, hop
    assert seen["x-kept"] == ["yes"]


def test_raw_block_sorting_matches_the_per_field_callbacks() -> None:
    raw = (b"GET / HTTP/1.1\r\nHost: a:1\r\n" + SPOOFED
           + b"Upgrade: WebSocket\r\nExpect:100-continue\r\nX-Empty:\r\n\r\n")

    class Fields:
        def __init__(self) -> None:
            self.head = Head(REQUEST_DROP, DROP_PREFIXES)
            self.on_header = self.head.add

    by_callbacks = Fields()
    httptools.HttpRequestParser(by_callbacks).feed_data(raw)
    by_block = Head(REQUEST_DROP, DROP_PREFIXES)
    by_block.add_block(raw[raw.index(b"\r\n") + 2:raw.index(b"\r\n\r\n") + 2])
    a, b = by_callbacks.head, by_block
    assert a.finish() and b.finish()
    for attr in Head.__slots__:
        assert getattr(a, attr) == getattr(b, attr), attr
    assert b.lines == [b"Host: a:1\r\n", b"X-Kept: yes \t\r\n", b"Expect: 100-continue\r\n",
                       b"X-Empty: \r\n"]
    response = Head(HOP_BY_HOP, (b"proxy-",))
    response.add_block(b"Server: x\r\nConnection: close, X-H\r\nX-H: 1\r\nKeep-Alive: 5\r\n")
    response.finish()
    assert response.lines == [b"Server: x\r\n"]


async def test_fast_and_general_request_paths_strip_the_same_fields(
        gateway: Harness, node: ClientCert) -> None:
    ctx = node.context(gateway.trust)
    head = b"GET /echo/%d HTTP/1.1\r\nHost: a\r\n" + SPOOFED + b"\r\n"

    def run() -> list[tuple[int, dict[str, list[str]], str]]:
        c = Raw(gateway.port, ctx)
        out = []
        try:
            c.send(head % 1)                                # one read: fast path
            c.send(head % 2)                                # same fields again: reused
            c.send(head % 3, pause=0)
            whole = head % 4
            c.send(whole[:30], whole[30:], pause=0.05)      # head over two reads: general
            c.send(b"POST /echo/5 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                   + SPOOFED + b"\r\nhi")                   # head + body in one read: general
            c.send(head % 6)                                # fast again after general ones
            c.send(b"GET /echo/7 HTTP/1.1\r\nHost: a\r\nX-Kept: yes\r\n"
                   b"Connection: X-Kept\r\n\r\n")           # new fields, Connection-named
            for _ in range(7):
                status, _, body = c.response()
                out.append((status, upstream_view(body), json.loads(body)["path"]))
        finally:
            c.close()
        return out

    results = await asyncio.to_thread(run)
    assert [(s, p) for s, _, p in results] == [(200, f"/echo/{i}") for i in range(1, 8)]
    for _, seen, _ in results[:6]:
        assert_clean(seen)
    assert "x-kept" not in results[6][1] and "connection" not in results[6][1]


async def test_fast_path_head_needs_a_host_and_keeps_http10_on_the_general_path(
        gateway: Harness, node: ClientCert) -> None:
    ctx = node.context(gateway.trust)

    def run() -> tuple[bytes, bytes]:
        c = Raw(gateway.port, ctx)
        try:
            c.send(b"GET /echo HTTP/1.0\r\n\r\n")
            status, fields, _ = c.response()
            ok = b"%d %s" % (status, fields.get("connection", "").encode())
        finally:
            c.close()
        c = Raw(gateway.port, ctx)
        try:
            c.send(b"GET /echo HTTP/1.1\r\nX-A: 1\r\n\r\n")
            return ok, b"%d" % c.response()[0]
        finally:
            c.close()

    http10, no_host = await asyncio.to_thread(run)
    assert http10 == b"200 close"
    assert no_host == b"400"


# --- response heads ------------------------------------------------------------------------------

Handler = Callable[[bytes], bytes]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[tuple[int, list[Handler]]]:
    """A keep-alive HTTP/1.1 upstream that answers request N with handlers[N](request)."""
    handlers: list[Handler] = []
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                answer = handlers[min(served, len(handlers) - 1)](request)
                served += 1
                writer.write(answer)  # one write: interim and final heads arrive together
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], handlers
    server.close()
    await server.wait_closed()


async def test_response_heads_are_sorted_from_raw_bytes_and_reused_only_when_identical(
        tmp_path, pki: Pki, server_tls, node: ClientCert,
        raw_upstream: tuple[int, list[Handler]]) -> None:
    port, handlers = raw_upstream

    def final(n: int, extra: bytes = b"") -> bytes:
        body = b"body-%d" % n
        return (b"HTTP/1.1 200 Fine\r\nServer: up\r\nX-N: %d\r\nConnection: keep-alive, X-Hop\r\n"
                b"X-Hop: secret\r\nProxy-Thing: p\r\n%sContent-Length: %d\r\n\r\n%s"
                % (n, extra, len(body), body))

    handlers += [
        lambda _: final(1),
        lambda _: final(1),                                      # identical head: reused
        lambda _: final(2),                                      # one field differs
        lambda _: b"HTTP/1.1 100 Continue\r\n\r\n" + final(3),   # interim + final, one read
        lambda _: (b"HTTP/1.1 200\r\nX-N: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n"),                    # no reason phrase; chunked
        lambda _: final(5, b"X-Extra: e\r\n"),
    ]
    h = await start_gateway(tmp_path, pki, server_tls, port)
    ctx = node.context(h.trust)

    def run() -> list[tuple[int, dict[str, str], bytes]]:
        c = Raw(h.port, ctx)
        try:
            out = []
            for i in range(6):
                c.send(b"GET /r/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
                answer = c.response()
                if answer[0] == 100:  # the interim head comes first, then the final one
                    answer = c.response()
                out.append(answer)
            return out
        finally:
            c.close()

    try:
        results = await asyncio.to_thread(run)
    finally:
        await h.gw.stop(drain_seconds=1)
    for i, (status, fields, body) in enumerate(results):
        assert status == 200, (i, status)
        assert "x-hop" not in fields and "proxy-thing" not in fields, fields
        assert fields.get("connection", "") in ("", "keep-alive"), fields
    assert [f["x-n"] for _, f, _ in results] == ["1", "1", "2", "3", "4", "5"]
    assert [b for _, _, b in results] == [b"body-1", b"body-1", b"body-2", b"body-3", b"abc", b"body-5"]
    assert results[5][1]["x-extra"] == "e" and "x-extra" not in results[4][1]


async def test_interim_response_is_forwarded_before_the_final_one(
        tmp_path, pki: Pki, server_tls, node: ClientCert,
        raw_upstream: tuple[int, list[Handler]]) -> None:
    port, handlers = raw_upstream
    handlers.append(lambda _: (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                               b"HTTP/1.1 204 No Content\r\nX-Final: 1\r\n\r\n"))
    h = await start_gateway(tmp_path, pki, server_tls, port)
    ctx = node.context(h.trust)

    def run() -> bytes:
        c = Raw(h.port, ctx)
        try:
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            while b"X-Final" not in c.buf:
                c.buf += c._recv()
            return c.buf
        finally:
            c.close()

    try:
        out = await asyncio.to_thread(run)
    finally:
        await h.gw.stop(drain_seconds=1)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", out) == [b"103", b"204"]
    interim = out.split(b"\r\n\r\n", 1)[0].lower()
    assert b"link: </a>" in interim  # its fields travel with it (RFC 8297 Early Hints)
