"""FerryHttpProtocol over real sockets: one write per answer, and HTTP/1.1 as uvicorn speaks it otherwise."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from ferry.rest.http import send
from ferry.rest.protocol import FerryHttpProtocol
from tests.conftest import free_port

written: list[bytes] = []
"""What each write to a connection's socket transport carried, in order (appended on the server's thread)."""


class CountingTransport:
    """The connection's socket transport, recording every ``write``."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        written.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class CountingProtocol(FerryHttpProtocol):
    """FerryHttpProtocol on a socket transport that records its writes (the access log stays as pytest sets it)."""

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(CountingTransport(transport))


async def app(scope: dict, receive, send_) -> None:
    """ferry's own send; /stream: a streamed body, a turn of the loop between parts; /nolength: no content-length;
    /echo: the body back; /crash: a head, then an error."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    if path == "/stream":
        await send_({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await send_({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)  # the part waits for no next write: it goes out when the loop's turn ends
        await send_({"type": "http.response.body", "body": b""})
    elif path == "/nolength":
        await send_({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send_({"type": "http.response.body", "body": b"no length"})
    elif path == "/crash":  # a head, then an error before the body
        await send_({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise RuntimeError("the app broke between head and body")
    elif path == "/echo":
        await send(send_, 200, body or b"{}")
    else:
        await send(send_, 404 if path == "/missing" else 200, b'{"path":"%s"}' % path.encode())


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=CountingProtocol, loop="uvloop", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def exchange(port: int, raw: bytes, answers: int = 1, timeout: float = 5) -> bytes:
    """Send ``raw`` on one connection; read until ``answers`` complete answers arrived or the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while _complete(data) < answers or b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete(data: bytes) -> int:
    """How many whole answers with a content-length ``data`` holds."""
    count = 0
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        if not lengths:
            return count
        size = int(lengths[0].split(b":")[1])
        if len(rest) < size:
            return count
        data, count = rest[size:], count + 1
    return count


def post(path: str, body: bytes = b'{"x":1}', extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(),
        version,
        len(body),
        extra,
        body,
    )


def test_an_answer_goes_out_in_one_write_with_one_content_length(server: int) -> None:
    written.clear()
    data = exchange(server, post("/serve/x"))
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert head.lower().count(b"content-length: ") == 1
    assert body == b'{"path":"/serve/x"}'
    assert written == [data]


def test_error_answers_and_bodies_of_every_size_go_out_whole(server: int) -> None:
    written.clear()
    missing = exchange(server, post("/missing"))
    assert missing.startswith(b"HTTP/1.1 404 Not Found")
    big = b'{"k":"' + b"v" * 300_000 + b'"}'
    data = exchange(server, post("/echo", big))
    assert data.split(b"\r\n\r\n", 1)[1] == big
    assert written == [missing, data]


def test_keep_alive_serves_many_answers_on_one_connection_in_order(server: int) -> None:
    paths = [f"/serve/n{i}" for i in range(20)]
    data = exchange(server, b"".join(post(p) for p in paths), answers=len(paths))  # pipelined
    bodies = [
        part.split(b"\r\n\r\n", 1)[1][: len(b'{"path":"%s"}' % p.encode())]
        for p, part in zip(paths, data.split(b"HTTP/1.1 ")[1:], strict=True)
    ]
    assert bodies == [b'{"path":"%s"}' % p.encode() for p in paths]


def test_connection_close_and_http_1_0_close_after_the_answer(server: int) -> None:
    for raw in (post("/serve/c", extra=b"Connection: close\r\n"), post("/serve/c", version=b"1.0")):
        written.clear()
        data = exchange(server, raw, answers=2)  # the server closes: recv returns b"" after one answer
        assert _complete(data) == 1
        assert b"connection: close" in data.lower()
        assert written == [data]


def test_head_streamed_and_lengthless_answers_go_out_as_uvicorn_frames_them(server: int) -> None:
    head = exchange(server, b"HEAD /serve/h HTTP/1.1\r\nHost: t\r\n\r\n", answers=0, timeout=1)
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")  # no body after a HEAD
    stream = exchange(server, post("/stream", extra=b"Connection: close\r\n"), answers=2)
    assert b"transfer-encoding: chunked" in stream.lower()
    assert stream.endswith(b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n")
    lengthless = exchange(server, post("/nolength", extra=b"Connection: close\r\n"), answers=2)
    assert lengthless.endswith(b"9\r\nno length\r\n0\r\n\r\n")


def test_a_request_body_sent_in_pieces_and_with_expect_continue_is_read_whole(server: int) -> None:
    body = b'{"pieces":"' + b"p" * 5000 + b'"}'
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        for start in range(0, len(body), 1000):
            sock.sendall(body[start : start + 1000])
            time.sleep(0.005)
        data = b""
        while _complete(data) < 1:
            data += sock.recv(65536)
    assert data.split(b"\r\n\r\n", 1)[1] == body


def test_an_app_that_fails_between_head_and_body_gets_its_connection_closed_after_the_head(server: int) -> None:
    data = exchange(server, post("/crash"), answers=2)  # returns once the server closed the connection
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")  # the head, held, then written before the close
    assert data.endswith(b"content-length: 2\r\n\r\n") and data.count(b"HTTP/1.1") == 1  # and nothing after it
    assert exchange(server, post("/serve/after")).startswith(b"HTTP/1.1 200 OK")  # the server serves on
