"""The dedicated servers' machinery (web.httpserver) on real sockets: the Acceptor
answers a one-shot connection from its first read without a transport, and hands every
other connection, with what it has parsed, to an event-loop transport."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from web import httpserver
from web.httpserver import HttpReply

BIG = 4 * 1024 * 1024  # an answer that cannot fit a new connection's socket buffer
ATTACHED: list[str] = []  # URLs of the connections that got a transport, in order


class _Test(httpserver.Connection):
    """``/inline``: answered from on_message_complete (like the OCSP hot path); ``/big``:
    the same with a 4 MiB body; ``/pool``: queued and answered from the thread pool."""

    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ATTACHED.append(bytes(self._url).decode())
        super().connection_made(transport)

    def on_message_complete(self) -> None:
        keep_alive = self.message_done()
        url = bytes(self._url)
        if url in (b"/inline", b"/big") and not self._queue and not self._busy:
            self.send(self._answer(url, bytes(self._body)), keep_alive=keep_alive)
        else:
            self.queue_request((url, bytes(self._body), keep_alive))

    @staticmethod
    def _answer(url: bytes, body: bytes) -> HttpReply:
        payload = b"x" * BIG if url == b"/big" else b"%s:%s" % (url, body)
        return HttpReply("200 OK", [("Content-Length", str(len(payload)))], payload)

    def handle(self, request: Any) -> None:
        url, body, keep_alive = request
        self.offload(lambda: self._answer(url, body), lambda reply: reply, lambda: httpserver.BAD_REQUEST, keep_alive)


@pytest.fixture
def port() -> Iterator[int]:
    loop = httpserver.new_loop()
    worker = httpserver.Worker(concurrent.futures.ThreadPoolExecutor(1))
    sock = httpserver.listen_socket("127.0.0.1", 0, share=False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)  # as run_worker does
    sock.listen(64)
    sock.setblocking(False)
    acceptor = httpserver.Acceptor(loop, sock, lambda: _Test(worker, loop))
    loop.call_soon(acceptor.start)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ATTACHED.clear()
    try:
        yield sock.getsockname()[1]
    finally:
        loop.call_soon_threadsafe(acceptor.stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        sock.close()
        worker.close()
        loop.close()


def _request(url: str, body: bytes = b"", *, close: bool = True) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"POST %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n%s" % (
        url.encode(),
        connection,
        len(body),
        body,
    )


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length: ")).split(b" ")[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_one_shot_request_is_answered_without_a_transport(port: int):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request("/inline", b"abc"))
        answer = _read_all(sock)  # the server closed after the answer
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in answer
    assert answer.endswith(b"\r\n\r\n/inline:abc")
    assert ATTACHED == []


def test_a_request_in_two_pieces_goes_on_through_a_transport(port: int):
    request = _request("/inline", b"0123456789")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request[:20])  # the first read has only part of the head
        time.sleep(0.2)
        sock.sendall(request[20:])
        answer = _read_all(sock)
    assert answer.endswith(b"/inline:0123456789")
    assert ATTACHED == ["/inline"]  # the transport got the half-parsed request


def test_a_kept_alive_connection_gets_its_first_answer_and_then_a_transport(port: int):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request("/inline", b"one", close=False))
        first = _read_answer(sock)
        sock.sendall(_request("/pool", b"two", close=False))
        second = _read_answer(sock)
        sock.sendall(_request("/inline", b"three"))
        third = _read_all(sock)
    assert first.endswith(b"/inline:one") and b"Connection: close" not in first
    assert second.endswith(b"/pool:two") and third.endswith(b"/inline:three")
    assert len(ATTACHED) == 1


def test_pipelined_requests_in_the_first_read_are_answered_in_order(port: int):
    requests = [_request("/pool", b"1", close=False), _request("/inline", b"2", close=False), _request("/inline", b"3")]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(requests))  # the second is answered inline only after the first
        answers = _read_all(sock)
    at = [answers.find(b"/pool:1"), answers.find(b"/inline:2"), answers.find(b"/inline:3")]
    assert -1 not in at and at == sorted(at) and answers.count(b"HTTP/1.1 200 OK") == 3


def test_an_answer_larger_than_the_socket_buffer_arrives_whole(port: int):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request("/big"))
        time.sleep(0.2)  # the server's send fills the buffers; the transport sends the rest
        answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"x" * BIG
    assert ATTACHED == ["/big"]  # what the first send left went through a transport


def test_connections_that_say_nothing_or_garbage_do_not_stop_it(port: int):
    for data in (b"", b"\x00\xff garbage\r\n\r\n", b"POST /inline HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if data:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = _read_all(sock)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request("/inline", b"still"))
        assert _read_all(sock).endswith(b"/inline:still")
