"""A small HTTP/1.1 client for a provider's streaming POST to one upstream origin (the
OpenAI and Anthropic providers send on it).

:class:`HTTP1Client` sends one kind of request (``POST`` to one URL, with headers fixed
when it is made) on a pool of keep-alive connections, and hands the response body
over as the transport delivers it. Each :class:`Connection` is the asyncio protocol of
one socket and the response being read on it; llhttp (Node's HTTP parser, through
``httptools``) does the parsing, chunked decoding included, in ``data_received``.

Why not aiohttp's client, which the providers used before: per open stream it kept
about 13 KB (the ``ClientResponse`` and its ``RequestInfo`` with every request header,
two ``StreamReader`` objects, the request writer's task, the connection wrapper),
against about 4 KB here on the same transport
(``python -m tests.benchmarks.client_memory``), and sending a request took a third of
the gateway's own time to first token. What it does that this does not, and a
provider does not need: redirects, cookies, proxies, compression (``Accept-Encoding:
identity`` is sent), request bodies other than bytes, other methods.

Non-obvious choices:

* A 2xx response keeps no headers (nothing reads them; they were about 1 KB per open
  stream); an error response keeps them for the error it becomes.
* The head of a response is bounded (:data:`MAX_HEAD_BYTES`): a hostile upstream
  cannot grow memory with endless headers. The body is flow-controlled: reading
  pauses while more than :data:`HIGH_WATER` bytes wait for the reader.
* A request sent on a reused connection that closes before any byte of the response
  is sent once more on a new connection: the upstream closed it while idle, as a
  keep-alive timeout does, so it never saw the request.
* Up to ``max_idle`` (1,024) idle connections are kept, each for ``idle_seconds`` (15):
  after a burst, the next one reuses them instead of connecting again (the aiohttp
  session before kept up to its 10,000-connection limit).
* Host names are resolved off the loop (``getaddrinfo`` in the default executor) and
  the answer kept for :data:`DNS_TTL` seconds; an IP literal is never resolved.
* The connect timeout covers resolution, the TCP connect and the TLS handshake;
  nothing after it is timed here (the gateway owns first-token and idle timeouts and
  cancels a wait, which closes the connection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Final, cast

import httptools
import yarl

#: Bytes a response's status line and headers may take.
MAX_HEAD_BYTES: Final = 64 * 1024
#: Body bytes buffered for the reader before the socket stops being read.
HIGH_WATER: Final = 256 * 1024
#: How long a resolved host name is trusted.
DNS_TTL: Final = 10.0
#: A 2xx response's headers: none kept (shared; nothing is added once a status is set).
_NO_HEADERS: Final[list[tuple[bytes, bytes]]] = []
#: Headers the client writes itself; a configured one of these is dropped.
_OWN_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
)


class HTTP1Error(Exception):
    """The upstream could not be reached, or did not answer in HTTP/1.1."""


class ConnectFailed(HTTP1Error):
    """No connection could be made; ``__cause__`` is the socket's error."""


class ConnectTimeout(HTTP1Error):
    """No connection within the connect timeout."""


class ConnectionClosed(HTTP1Error):
    """The connection closed before the response ended."""


class InvalidResponse(HTTP1Error):
    """The upstream's bytes are not an HTTP/1.1 response this client accepts."""


class HTTP1Client:
    """``POST``s to one URL with fixed headers, on a pool of keep-alive connections."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 1024,
        idle_seconds: float = 15.0,
    ) -> None:
        parsed = yarl.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.raw_host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host: str = parsed.raw_host
        self._port: int = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._ssl = (
            (ssl_context or ssl.create_default_context()) if parsed.scheme == "https" else None
        )
        self._head = _request_head(parsed, self._host, headers)
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        #: Idle connections, the most recently used last, with when they went idle.
        self._idle: dict[Connection, float] = {}
        #: Every open connection, idle or not (closed by :meth:`aclose`).
        self._open: set[Connection] = set()
        self._addresses: list[tuple[int, int, int, tuple[object, ...]]] | None = None
        self._resolved_until = 0.0
        try:
            literal = ipaddress.ip_address(self._host.strip("[]"))
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            self._addresses = [(family, socket.SOCK_STREAM, 0, (str(literal), self._port))]
            self._resolved_until = float("inf")
        self._closed = False

    async def post(self, body: bytes) -> Connection:
        """Send ``body``; return the connection once the response's head has come.

        The caller reads the body with :meth:`Connection.read` and must end with
        :meth:`Connection.release` (which closes a connection not read to its end).
        """
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        connection = self._take_idle()
        if connection is not None:
            try:
                await connection.send(request)
                return connection
            except ConnectionClosed:
                if connection.answered:
                    raise
                # Closed by the upstream while idle: it never saw the request.
        connection = await self._connect()
        await connection.send(request)
        return connection

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.popitem()
            if now - since < self._idle_seconds and connection.is_open:
                return connection
            connection.close()
        return None

    def _keep(self, connection: Connection) -> None:
        """Take back a connection whose response was read to its end."""
        if self._closed or len(self._idle) >= self._max_idle:
            connection.close()
        else:
            self._idle[connection] = time.monotonic()

    def _forget(self, connection: Connection) -> None:
        self._idle.pop(connection, None)
        self._open.discard(connection)

    async def _connect(self) -> Connection:
        if self._closed:
            raise ConnectFailed("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                last: OSError | None = None
                addresses = await self._resolve(loop)
                for index, (family, kind, proto, address) in enumerate(addresses):
                    try:
                        connection = await self._open_one(loop, family, kind, proto, address)
                    except OSError as exc:
                        last = exc
                        continue
                    if index:  # tried first from now on (``localhost``: ::1 refused)
                        addresses.insert(0, addresses.pop(index))
                    return connection
                raise last or OSError(f"no address for {self._host}")
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self._connect_timeout} s") from None
        except OSError as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _open_one(
        self,
        loop: asyncio.AbstractEventLoop,
        family: int,
        kind: int,
        proto: int,
        address: tuple[object, ...],
    ) -> Connection:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            _, connection = await loop.create_connection(
                lambda: Connection(self),
                sock=sock,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        except BaseException:
            sock.close()
            raise
        self._open.add(connection)
        return connection

    async def _resolve(
        self, loop: asyncio.AbstractEventLoop
    ) -> list[tuple[int, int, int, tuple[object, ...]]]:
        if self._addresses is not None and time.monotonic() < self._resolved_until:
            return self._addresses
        infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        addresses: list[tuple[int, int, int, tuple[object, ...]]] = [
            (family, kind, proto, tuple(addr)) for family, kind, proto, _, addr in infos
        ]
        if not addresses:
            raise OSError(f"{self._host} has no address")
        self._addresses, self._resolved_until = addresses, time.monotonic() + DNS_TTL
        return addresses


class Connection(asyncio.Protocol):
    """One upstream connection, and the response being read on it."""

    __slots__ = (
        "_body",
        "_buffered",
        "_client",
        "_complete",
        "_error",
        "_expecting",
        "_framed",
        "_head_bytes",
        "_headers",
        "_informational",
        "_keep_alive",
        "_parser",
        "_paused",
        "_transport",
        "_waiter",
        "answered",
        "status",
    )

    def __init__(self, client: HTTP1Client) -> None:
        self._client = client
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        #: The response's status; 0 until its head has come.
        self.status = 0
        #: Any byte of the response has come.
        self.answered = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._buffered = 0
        self._head_bytes = 0
        self._complete = False
        self._keep_alive = False
        self._framed = False
        self._informational = False
        self._paused = False
        self._expecting = False
        self._error: HTTP1Error | None = None

    # --- what the provider calls ---

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def at_eof(self) -> bool:
        """The whole body has been read."""
        return self._complete and not self._body

    def headers(self) -> list[tuple[str, str]]:
        """An error response's headers (a 2xx response keeps none)."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._headers]

    async def send(self, request: bytes) -> None:
        """Write ``request``; return once the response's head has come."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionClosed("upstream closed the connection")
        self._expecting = True
        transport.write(request)
        try:
            while not self.status:
                if self._error is not None:
                    raise self._error
                await self.arrival()
        except BaseException:
            self.close()
            raise

    def take(self) -> bytes | None:
        """The body bytes that came since the last take, ``b""`` at the body's end, or
        None when nothing came yet (then await :meth:`arrival`); raises the error that
        ended the response, once its bytes have all been taken."""
        body = self._body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            self._buffered = 0
            if self._paused and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        if self._complete:
            return b""
        return None

    def arrival(self) -> asyncio.Future[None]:
        """Resolved when :meth:`take` has something new to say.

        A future, awaited by the reader itself: no coroutine of this class between a
        waiting stream and its socket, to hold (about 0.4 KB per open stream) or to
        resume for every token.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def read(self) -> bytes:
        """:meth:`take`, waiting for it."""
        while (data := self.take()) is None:
            await self.arrival()
        return data

    async def read_body(self, limit: int) -> bytes:
        """The rest of the body, up to ``limit`` bytes (the rest is not read)."""
        parts: list[bytes] = []
        size = 0
        while size < limit and (data := await self.read()):
            parts.append(data)
            size += len(data)
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Done with the response: the connection goes back to the pool if the
        response was read to its end and may be followed by another, else it closes."""
        if self.at_eof and self._keep_alive and self._error is None and self.is_open:
            self._reset()
            self._client._keep(self)
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # not cancelled with its reader
                waiter.set_result(None)

    def _fail(self, error: HTTP1Error) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()
        self.close()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._client._forget(self)
        if not self._complete and self._error is None:
            if self.status and not self._framed:
                self._complete = True  # a body delimited by the connection's close
            else:
                self._error = ConnectionClosed("upstream closed the connection")
        self._wake()

    def data_received(self, data: bytes) -> None:
        if not self.status:
            if not self._expecting:  # bytes no request asked for (the connection is idle)
                self.close()
                return
            self.answered = True  # before the head only: not a store per token
        elif self._complete:
            # Bytes after the response ended: not a connection to reuse.
            self._keep_alive = False
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(InvalidResponse("upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(InvalidResponse(f"invalid HTTP response from upstream: {exc}"))
            return
        if not self.status:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(InvalidResponse("upstream response head too large"))

    def pause_writing(self) -> None:  # a large request: the transport buffers it
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a trailer, after a chunked body: not kept (nor bounded by the head's limit)
        lowered = name.lower()
        if lowered == b"content-length" or lowered == b"transfer-encoding":
            self._framed = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the real answer follows
            self._informational = True
            self._headers = []
            self._framed = False
            return
        if status in (204, 304):
            self._framed = True
        if status < 300:
            self._headers = _NO_HEADERS
        self.status = status
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()


def _request_head(url: yarl.URL, host: str, headers: Mapping[str, str]) -> bytes:
    """Everything of the request before its ``Content-Length`` value."""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    authority = host if url.is_default_port() else f"{host}:{url.port}"
    lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {authority}"]
    for name, value in headers.items():
        if name.lower() in _OWN_HEADERS:
            continue
        if any(c in name for c in "\r\n:\0 ") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has a character not allowed in HTTP/1.1")
        lines.append(f"{name}: {value}")
    lines += ["Accept-Encoding: identity", "Content-Length: "]
    return "\r\n".join(lines).encode()
