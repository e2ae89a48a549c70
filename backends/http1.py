"""A small HTTP/1.1 client for streamed responses: keep-alive connections and their pool.

The response is parsed inside the transport's read callback by `httptools` (the llhttp
bindings uvicorn uses) and each body piece goes straight to a sink function, so the waiting
coroutine wakes once per response instead of once per read (see `fast_stream` for why).

Scope, on purpose: one request at a time per connection, `http://` and `https://`, bodies
framed by Content-Length, chunked encoding or the end of the connection. No redirects,
proxies, compression (requests ask for `identity`) or pipelining.
"""
from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import ssl
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import httptools

READ_SIZE = 1 << 16   # one read buffer for the whole pool (reads are handled one at a time)
WARM_BATCH = 32       # connections opened at once by `ConnectionPool.warm`
ERROR_BODY_BYTES = 4096  # bytes of a non-200 body kept; a longer one closes the connection


class ServerDisconnectedError(ConnectionError):
    """The connection closed before any byte of the response."""


class ResponseIncompleteError(ConnectionError):
    """The connection closed in the middle of a response."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str                 # path and query, as sent on the request line
    host_header: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        if parts.port is not None and port != (443 if tls else 80):
            shown += f":{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(host, port, path, shown, tls)


def request_head(endpoint: Endpoint, headers: dict[str, str]) -> bytes:
    """A POST head up to (not including) Content-Length's value."""
    lines = [f"POST {endpoint.path} HTTP/1.1", f"Host: {endpoint.host_header}",
             "Accept: */*", "Accept-Encoding: identity", "User-Agent: twinbench"]
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: line breaks are not allowed")  # no value shown
        if name.lower() not in ("host", "content-length", "accept-encoding"):
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection. `request()` writes a request and returns a future that is
    resolved when the response ends or when the sink says it has read enough; afterwards the
    owner calls `finish(keep)`."""

    def __init__(self, pool: "ConnectionPool"):
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.status = 0
        self.error_body = bytearray()
        self.requests = 0               # requests sent on this connection
        self.complete = True           # the last response was read to its end
        self._reusable = True           # ... and the server keeps the connection open
        self._sink: Callable[[bytes], bool] | None = None
        self._waiter: asyncio.Future | None = None
        self._started = False           # a byte of the current response arrived
        self._framed = False            # its length is known (an EOF mid-body is a fault)
        self._linger = False            # return to the pool when the response ends

    # ---- used by the sender -----------------------------------------------------------------
    def request(self, data: bytes, sink: Callable[[bytes], bool]) -> asyncio.Future:
        self.status, self.complete, self._started, self._framed = 0, False, False, False
        self._reusable = True
        self.error_body.clear()
        self._sink, self._linger = sink, False
        self._waiter = self._pool.loop.create_future()
        self.requests += 1
        if self.closed or self.transport.is_closing():
            # the server hung up between connect and now: a write would vanish silently and
            # the request wait out its whole timeout
            self._waiter.set_exception(ServerDisconnectedError(
                "Server disconnected before the request was sent"))
            return self._waiter
        self.transport.write(data)
        return self._waiter

    def finish(self, keep: bool) -> None:
        """The owner is done: reuse the connection (now, or once the response has ended) when
        `keep`, else close it."""
        self._sink = None
        if self.closed:
            return
        if not keep or (self.complete and not self._reusable):
            self.close()
        elif self.complete:
            self._pool.release(self)
        else:
            self._linger = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def quiet(self) -> bool:
        """True when an idle connection is still open and has nothing to read (a readable
        idle socket means the server closed it, or sent what no request asked for)."""
        if self.closed or self.transport.is_closing():
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    # ---- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int):
        return self._pool.buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._parser.feed_data(self._pool.view[:nbytes])
        except httptools.HttpParserCallbackError as e:  # our sink raised: hand it over
            self._fault(e.__context__ or e)
        except httptools.HttpParserError as e:
            self._fault(e)
        except httptools.HttpParserUpgrade:  # 101 Switching Protocols: not an HTTP stream
            self._fault(httptools.HttpParserError(
                f"the server switched protocols (HTTP {self._parser.get_status_code()})"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._waiter is None or self._waiter.done():
            return
        why = f" ({type(exc).__name__}: {exc})" if exc else ""
        if self.status and not self._framed and not self.complete:
            self._end()  # a body delimited by the end of the connection
        elif not self._started:
            reused = " on a reused connection" if self.requests > 1 else ""
            self._waiter.set_exception(ServerDisconnectedError(
                "Server disconnected" + reused + why))
        else:
            self._waiter.set_exception(ResponseIncompleteError(
                "connection closed before the end of the response" + why))

    # ---- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._sink is None:  # the sender has read what it needs (stream over, or enough
            return              # of an error body); the rest only ends the response
        if self.status == 200:
            if self._sink(body):
                self._sink = None
                self._resolve()
        else:
            self.error_body += body[:ERROR_BODY_BYTES - len(self.error_body)]
            if len(self.error_body) >= ERROR_BODY_BYTES:
                self._sink = None
                self._resolve()

    def on_message_complete(self) -> None:
        self._end()

    # ---- internals --------------------------------------------------------------------------
    def _end(self) -> None:
        if 100 <= self.status < 200:  # an interim response: the real one follows
            self.status, self._started, self._framed = 0, False, False
            return
        self.complete = True
        self._reusable = self._parser.should_keep_alive() and not self.closed
        self._resolve()
        if self._linger:
            self._linger = False
            if self._reusable:
                self._pool.release(self)
            else:
                self.close()

    def _resolve(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fault(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()


class ConnectionPool:
    """Keep-alive connections to one endpoint; as many as there are requests in flight."""

    def __init__(self, endpoint: Endpoint, ssl_context: ssl.SSLContext | None = None):
        self.endpoint = endpoint
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)
        self._ssl = (ssl_context or ssl.create_default_context()) if endpoint.tls else None
        self._idle: list[Connection] = []
        self._addrs: list[str] | None = None
        self._open: set[Connection] = set()

    def take(self) -> Connection | None:
        """An idle connection that is still open, or None."""
        while self._idle:
            conn = self._idle.pop()  # the most recent: least likely closed by the server
            if conn.quiet():
                return conn
            conn.close()
        return None

    async def resolve(self) -> None:
        """Look the host up once per run (as aiohttp's DNS cache does); an IP needs no look-up."""
        ep = self.endpoint
        try:
            self._addrs = [str(ipaddress.ip_address(ep.host))]
        except ValueError:
            infos = await self.loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
            self._addrs = list(dict.fromkeys(info[4][0] for info in infos))

    async def connect(self) -> Connection:
        ep = self.endpoint
        if self._addrs is None:
            await self.resolve()
        errors: list[OSError] = []
        for addr in self._addrs:
            try:
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), addr, ep.port, ssl=self._ssl,
                    server_hostname=ep.host if ep.tls else None)
            except OSError as e:
                errors.append(e)
                continue
            if not conn.closed:  # (a connection the server already closed fails on use)
                self._open.add(conn)
            return conn
        if len({str(e) for e in errors}) == 1:
            raise errors[0]
        raise OSError("Multiple exceptions: " + ", ".join(str(e) for e in errors))

    async def warm(self, n: int, timeout_s: float) -> int:
        """Open up to `n` idle connections before the run; returns how many opened.

        Opening a connection costs the client's loop ~0.1-1 ms of CPU and the kernel more;
        at hundreds of requests per second the first second of a run would pay that for
        every request (no idle connection yet) and show it as dispatch lag. Stops at the
        first failure: a server that refuses or is slow shows on the requests instead."""
        opened = 0
        while opened < n:
            batch = min(WARM_BATCH, n - opened)
            try:
                results = await asyncio.wait_for(asyncio.gather(
                    *(self.connect() for _ in range(batch)), return_exceptions=True), timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                break
            conns = [c for c in results if isinstance(c, Connection) and not c.closed]
            self._idle.extend(conns)
            opened += len(conns)
            if len(conns) < batch:
                break
        return opened

    def release(self, conn: Connection) -> None:
        if not conn.closed:
            self._idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing their sockets
