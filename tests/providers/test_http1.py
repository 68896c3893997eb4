"""providers.support.http1 against raw loopback servers that write exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from providers.support import http1
from providers.support.http1 import HTTP1Client
from tests.support.fakes.openai_upstream import blackhole_port
from tests.support.ports import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


class RawServer:
    """A loopback TCP server running ``handler`` for each connection, counting them."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One whole request (head and Content-Length body), recorded."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@contextlib.asynccontextmanager
async def client_for(
    server: RawServer, scheme: str = "http", host: str = "127.0.0.1", **kwargs: object
) -> AsyncIterator[HTTP1Client]:
    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    client = HTTP1Client(
        f"{scheme}://{host}:{server.port}/v1/chat/completions?x=1",
        headers,
        connect_timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )
    try:
        yield client
    finally:
        await client.aclose()


async def body_of(connection: http1.Connection) -> bytes:
    parts = []
    while data := await connection.read():
        parts.append(data)
    return b"".join(parts)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_the_request_is_one_exact_head_and_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Content-Length: 2\r\n\r\nok")

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b'{"a":1}')
        assert await body_of(connection) == b"ok"
        connection.release()
    assert server.requests == [
        b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Authorization: Bearer k\r\n"
        b"Content-Type: application/json\r\n"
        b"Accept-Encoding: identity\r\n"
        b"Content-Length: 7\r\n\r\n"
        b'{"a":1}' % server.port
    ]


@pytest.mark.parametrize(
    ("framing", "wire"),
    [
        ("content-length", b"Content-Length: 11\r\n\r\nhello world"),
        ("chunked", b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"hello", b" ", b"world")),
        ("close-delimited", b"Connection: close\r\n\r\nhello world"),
    ],
)
async def test_every_body_framing_is_read_to_its_exact_end(framing: str, wire: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + wire)
        if framing == "close-delimited":
            await writer.drain()
            writer.close()
        else:
            await reader.read()  # keep the connection until the client closes it

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert connection.status == 200
        assert await body_of(connection) == b"hello world"
        assert connection.at_eof
        connection.release()


async def test_a_chunk_is_handed_over_as_it_arrives() -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await go.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await reader.read()

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert await connection.read() == b"first"
        go.set()
        assert await connection.read() == b"second"
        assert await connection.read() == b""
        connection.release()


async def test_a_connection_read_to_its_end_is_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"x"))

    async with RawServer(handler) as server, client_for(server) as client:
        for _ in range(3):
            connection = await client.post(b"{}")
            assert await body_of(connection) == b"x"
            connection.release()
    assert server.connections == 1
    assert len(server.requests) == 3


async def test_a_response_saying_close_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Connection: close\r\nContent-Length: 1\r\n\r\nx")
        await reader.read()

    async with RawServer(handler) as server, client_for(server) as client:
        for _ in range(2):
            connection = await client.post(b"{}")
            assert await body_of(connection) == b"x"
            connection.release()
    assert server.connections == 2


async def test_a_stream_left_early_closes_its_connection() -> None:
    """How the upstream learns the client left: its connection closes."""
    eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        assert await reader.read() == b""
        eof.set()

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert await connection.read() == b"first"
        connection.release()
        await asyncio.wait_for(eof.wait(), 5)
        connection = await client.post(b"{}")  # a new connection, not the closed one
        assert await connection.read() == b"first"
        connection.release()
    assert server.connections == 2


async def test_cancelled_while_waiting_for_the_head_closes_the_connection() -> None:
    eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        assert await reader.read() == b""
        eof.set()

    async with RawServer(handler) as server, client_for(server) as client:
        waiting = asyncio.ensure_future(client.post(b"{}"))
        while not server.requests:
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(eof.wait(), 5)


@pytest.mark.parametrize("when", ["while idle", "as the request came"])
async def test_an_idle_connection_the_upstream_closed_is_not_a_failed_request(
    when: str,
) -> None:
    """A keep-alive timeout on the upstream's side: the request goes on a new
    connection, whether the close reached the client before it sent or after."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Content-Length: 1\r\n\r\nx")
        await writer.drain()
        if server.connections == 1 and when == "as the request came":
            await reader.read(1)  # the next request's first byte, then closed unanswered

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"x"
        connection.release()
        if when == "while idle":
            await asyncio.sleep(0.1)
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"x"
        connection.release()
    assert server.connections == 2


async def test_a_connection_closed_mid_body_fails_the_read() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Content-Length: 100\r\n\r\nonly this")

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert await connection.read() == b"only this"
        with pytest.raises(http1.ConnectionClosed):
            await connection.read()
        connection.release()


async def test_a_connection_closed_before_the_head_fails_the_post() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")

    async with RawServer(handler) as server, client_for(server) as client:
        with pytest.raises(http1.ConnectionClosed):
            await client.post(b"{}")
    assert len(server.requests) == 1  # a connection that answered is not retried


@pytest.mark.parametrize(
    "wire",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * (http1.MAX_HEAD_BYTES + 10),
    ],
    ids=["not-http", "bad-length", "upgrade", "endless-head"],
)
async def test_bytes_that_are_not_an_acceptable_response_fail_the_post(wire: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(wire)
        await reader.read()

    async with RawServer(handler) as server, client_for(server) as client:
        with pytest.raises(http1.InvalidResponse):
            await client.post(b"{}")


async def test_an_informational_response_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HEAD + b"Content-Length: 2\r\n\r\nok")
        await reader.read()

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert connection.status == 200
        assert await body_of(connection) == b"ok"
        connection.release()


async def test_an_error_response_keeps_its_headers_and_a_success_none() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            if len(server.requests) == 1:  # a long error body, of which a bound is read
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n")
                writer.write(b"Content-Length: 100000\r\n\r\n" + b"n" * 5000)
            else:
                writer.write(OK_HEAD + b"Content-Length: 2\r\n\r\nok")

    async with RawServer(handler) as server, client_for(server) as client:
        refused = await client.post(b"{}")
        assert refused.status == 429
        assert ("Retry-After", "3") in refused.headers()
        assert await refused.read_body(10) == b"n" * 10
        refused.release()  # not read to its end: closed, not reused
        served = await client.post(b"{}")
        assert served.status == 200
        assert served.headers() == []
        assert await body_of(served) == b"ok"
        served.release()
    assert server.connections == 2


async def test_bytes_on_an_idle_connection_close_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(OK_HEAD + b"Content-Length: 1\r\n\r\nx")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(OK_HEAD + b"Content-Length: 1\r\n\r\ny")  # nobody asked

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"x"
        connection.release()
        await asyncio.sleep(0.2)
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"x"  # not the unasked-for "y"
        connection.release()
    assert server.connections == 2


async def test_a_reader_that_falls_behind_stops_the_socket_being_read() -> None:
    """Memory per stream is bounded: a slow reader makes the upstream wait."""
    piece = b"z" * 65536
    backlog: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(256):  # 16 MB, far past any socket buffer
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await asyncio.sleep(0.5)
        backlog.append(writer.transport.get_write_buffer_size())
        writer.write(b"0\r\n\r\n")
        await reader.read()

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        first = await connection.read()
        await asyncio.sleep(0.6)  # reads nothing meanwhile
        size = len(first) + len(await body_of(connection))
        connection.release()
    assert size == 256 * len(piece)
    # Most of it still waited on the upstream's side when the client had stopped reading.
    assert backlog[0] > 8 * 1024 * 1024


async def test_connection_refused_is_connect_failed() -> None:
    client = HTTP1Client(f"http://127.0.0.1:{free_port()}/v1", {}, connect_timeout=5)
    with pytest.raises(http1.ConnectFailed) as raised:
        await client.post(b"{}")
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    await client.aclose()


async def test_a_connect_that_hangs_is_a_connect_timeout() -> None:
    with blackhole_port() as port:
        client = HTTP1Client(f"http://127.0.0.1:{port}/v1", {}, connect_timeout=0.2)
        with pytest.raises(http1.ConnectTimeout):
            await client.post(b"{}")
        await client.aclose()


def test_a_header_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        HTTP1Client("http://127.0.0.1:1/v1", {"X-Team": "a\r\nX-Injected: 1"}, connect_timeout=1)


async def test_aclose_closes_connections_in_use() -> None:
    eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
        assert await reader.read() == b""
        eof.set()

    async with RawServer(handler) as server:
        async with client_for(server) as client:
            connection = await client.post(b"{}")
            assert await connection.read() == b"x"
        await asyncio.wait_for(eof.wait(), 5)
        with pytest.raises(http1.ConnectionClosed):
            await connection.read()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (Debian's openssl)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_with_a_resolved_host_name(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await server.read_request(reader)
            assert request.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
            writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"sec", b"ret"))

    async with RawServer(handler, served) as server:
        async with client_for(server, "https", "localhost", ssl_context=trusted) as client:
            for _ in range(2):
                connection = await client.post(b"{}")
                assert await body_of(connection) == b"secret"
                connection.release()
        assert server.connections == 1
        # The certificate is checked: a client trusting only the system's CAs refuses it.
        async with client_for(server, "https", "localhost") as client:
            with pytest.raises(http1.ConnectFailed) as raised:
                await client.post(b"{}")
            assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)


def test_the_client_works_on_uvloop() -> None:
    """Regression: the gateway runs on uvloop, whose transports are not
    ``asyncio.Transport`` instances; an ``isinstance`` check failed every stream."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"a", b"b"))

    async def main() -> list[bytes]:
        async with client_for(server) as client:
            bodies = []
            for _ in range(2):
                connection = await client.post(b"{}")
                bodies.append(await body_of(connection))
                connection.release()
            return bodies

    async def served() -> list[bytes]:
        async with server:
            return await main()

    server = RawServer(handler)
    assert uvloop.run(served()) == [b"ab", b"ab"]
    assert server.connections == 1


async def test_trailers_after_a_chunked_body_are_read_past_and_not_kept() -> None:
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"t" * 1000) for i in range(100))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nX-Head: h\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n4\r\nfail\r\n0\r\n" + trailers + b"\r\n"
        )
        await reader.read()

    async with RawServer(handler) as server, client_for(server) as client:
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"fail"
        assert connection.headers() == [("X-Head", "h"), ("Transfer-Encoding", "chunked")]
        connection.release()


async def test_an_ipv6_literal_upstream() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        await reader.readexactly(2)
        writer.write(OK_HEAD + b"Content-Length: 2\r\n\r\nv6")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(handle, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = server.sockets[0].getsockname()[1]
    client = HTTP1Client(f"http://[::1]:{port}/v1/chat/completions", {}, connect_timeout=5)
    try:
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"v6"
        connection.release()
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: [::1]:%d\r\n" % port)


async def test_idle_connections_past_the_cap_are_closed() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await server.read_request(reader)
                writer.write(OK_HEAD + b"Content-Length: 1\r\n\r\nx")
        except asyncio.IncompleteReadError:
            closed.set()  # the client closed this connection

    async with RawServer(handler) as server, client_for(server, max_idle=1) as client:
        first, second = await client.post(b"{}"), await client.post(b"{}")  # two at once
        for connection in (first, second):
            assert await body_of(connection) == b"x"
            connection.release()
        await asyncio.wait_for(closed.wait(), 5)  # the second did not fit in the pool
        connection = await client.post(b"{}")
        assert await body_of(connection) == b"x"
        connection.release()
    assert server.connections == 2
