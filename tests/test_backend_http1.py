"""The lean HTTP/1.1 stream client (backends/http1.py, backends/fast_stream.py) against a raw
local server whose replies are written byte for byte: keep-alive reuse, a reconnect when the
server closed an idle connection, bodies ended by the connection, Connection: close, long error
bodies, a server that hangs up before answering, https, and the request it sends."""
import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from twinbench.backends.fast_stream import FastStreamSender
from twinbench.backends.http1 import ConnectionPool, Endpoint, request_head
from twinbench.backends.stream_state import StreamTarget
from twinbench.replay.dispatch import Attempt

N_TOKENS = 3


def _sse() -> bytes:
    msgs = [{"choices": [{"index": 0, "text": f" t{k}", "finish_reason": None}]}
            for k in range(N_TOKENS)]
    msgs.append({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": N_TOKENS}})
    return b"".join(b"data: " + json.dumps(m).encode() + b"\n\n" for m in msgs) + \
        b"data: [DONE]\n\n"


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


class RawServer:
    """Answers each request by the `model` in its body; runs in a thread with its own loop."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.tls = tls
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                model = json.loads(await reader.readexactly(length))["model"]
                if model == "hangup":
                    break
                if model == "upgrade":  # 101: the connection stops being HTTP
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                                 b"Connection: Upgrade\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.2)
                    break
                if model == "wrong-shape":  # valid JSON, but `choices` is not a list
                    body = b'data: {"choices": {"a": 1}}\n\n'
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                    continue
                if model == "eof":  # no length, no chunks: the body ends with the connection
                    writer.write(SSE_HEAD + b"\r\n" + _sse())
                    break
                if model in ("big-error", "slow-big-error"):
                    body = b"x" * 10000
                    writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body[:5000]))
                    if model == "slow-big-error":  # the client stops reading before the end
                        await writer.drain()
                        await asyncio.sleep(0.2)
                    writer.write(body[5000:])
                    continue
                close = model == "close"
                writer.write(SSE_HEAD + (b"Connection: close\r\n" if close else b"")
                             + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(_sse()))
                await writer.drain()
                if close or model == "then-idle-close":
                    await asyncio.sleep(0.01)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def start(self) -> "RawServer":
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls), self._loop).result()
        self.port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def server():
    srv = RawServer().start()
    yield srv
    srv.stop()


def _send_all(url: str, models: list[str], pause_s: float = 0.0,
              ssl_context: ssl.SSLContext | None = None) -> tuple[list[Attempt], int]:
    """Send one request per model, one after the other; (attempts, connections left open)."""
    async def go():
        pool = ConnectionPool(Endpoint.parse(url + "/v1/completions"), ssl_context)
        target = StreamTarget(url=url + "/v1/completions", timeout_s=5, chat=False,
                              headers={"Content-Type": "application/json",
                                       "Authorization": "Bearer sk-key"})
        bodies = [json.dumps({"model": m}).encode() for m in models]
        sender = FastStreamSender(pool, target, bodies.__getitem__, lambda row: N_TOKENS)
        out = []
        for row in range(len(models)):
            attempt = Attempt(row=row)
            await sender.send(row, attempt)
            out.append(attempt)
            await asyncio.sleep(0.005)
            time.sleep(pause_s)  # blocks the loop: a server close stays unread meanwhile
        left = len(pool._open)
        await pool.close()
        return out, left
    return asyncio.run(go())


def test_keep_alive_reuses_one_connection(server):
    url = f"http://127.0.0.1:{server.port}"
    attempts, left = _send_all(url, ["ok"] * 5)
    assert all(a.status == "ok" and len(a.stamps) == N_TOKENS and a.output_tokens == N_TOKENS
               for a in attempts)
    assert server.connections == 1 and left == 1
    head = server.heads[0].decode()
    assert head.startswith("POST /v1/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "Authorization: Bearer sk-key\r\n" in head and "Accept-Encoding: identity" in head


def test_idle_connection_closed_by_the_server_is_replaced_before_sending(server):
    url = f"http://127.0.0.1:{server.port}"
    # the server closes each connection shortly after its response; the client's loop is
    # blocked meanwhile, so the next send finds an idle connection whose close is unread
    attempts, _ = _send_all(url, ["then-idle-close"] * 3, pause_s=0.1)
    assert [a.status for a in attempts] == ["ok"] * 3
    assert server.connections == 3


def test_connection_close_and_eof_bodies(server):
    url = f"http://127.0.0.1:{server.port}"
    attempts, left = _send_all(url, ["close", "eof", "ok"])
    assert [a.status for a in attempts] == ["ok"] * 3
    assert all(len(a.stamps) == N_TOKENS for a in attempts)
    assert server.connections == 3 and left == 1


def test_long_error_body_and_hangup(server):
    url = f"http://127.0.0.1:{server.port}"
    attempts, _ = _send_all(url, ["hangup", "big-error", "ok", "hangup"])
    assert attempts[0].status == "error"
    assert attempts[0].error == "ServerDisconnectedError: Server disconnected"
    assert attempts[1].status == "error" and attempts[1].error == "HTTP 500: " + "x" * 500
    assert attempts[2].status == "ok"
    assert attempts[3].error == "ServerDisconnectedError: Server disconnected on a reused " \
                                "connection"
    connections = server.connections
    attempts, left = _send_all(url, ["slow-big-error", "ok"])
    assert attempts[0].error == "HTTP 500: " + "x" * 500 and attempts[1].status == "ok"
    assert server.connections == connections + 2 and left == 1  # the first one was closed


def test_request_head_refuses_line_breaks_without_showing_the_value():
    ep = Endpoint.parse("https://[::1]/v1/completions?x=1")
    assert (ep.host, ep.port, ep.path, ep.host_header, ep.tls) == \
        ("::1", 443, "/v1/completions?x=1", "[::1]", True)
    with pytest.raises(ValueError) as e:
        request_head(ep, {"Authorization": "Bearer sk-1\r\nX: y"})
    assert "sk-1" not in str(e.value)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = RawServer(tls=server_ctx).start()
    try:
        url = f"https://localhost:{srv.port}"
        attempts, _ = _send_all(url, ["ok", "ok"], ssl_context=ssl.create_default_context(
            cafile=str(cert)))
        assert [a.status for a in attempts] == ["ok", "ok"] and srv.connections == 1
        # the default context verifies the certificate: a self-signed one cannot connect
        attempts, _ = _send_all(url, ["ok"])
        assert attempts[0].status == "error" and attempts[0].error.startswith("cannot connect")
    finally:
        srv.stop()


def test_connection_refused_text():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    attempts, _ = _send_all(f"http://127.0.0.1:{port}", ["ok"])
    assert attempts[0].status == "error"
    assert attempts[0].error == (f"cannot connect: [Errno 111] Connect call failed "
                                 f"('127.0.0.1', {port})")
    assert attempts[0].sent is not None


def test_upgrade_and_wrong_shaped_json_are_records_not_tracebacks(server):
    attempts, _ = _send_all(f"http://127.0.0.1:{server.port}", ["upgrade", "wrong-shape", "ok"])
    assert [a.status for a in attempts] == ["error", "error", "ok"]
    assert attempts[0].error == "HttpParserError: the server switched protocols (HTTP 101)"
    assert attempts[1].error.startswith("malformed SSE data (unexpected shape: ")


def test_a_new_connection_closed_before_the_request_fails_at_once():
    # a server that accepts and hangs up at once (a proxy at its limit, a draining server):
    # each request must fail now, not wait out its timeout on a write that went nowhere
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        t0 = time.perf_counter()
        attempts, left = _send_all(f"http://127.0.0.1:{listener.getsockname()[1]}", ["ok"] * 10)
        assert time.perf_counter() - t0 < 3.0  # the timeout is 5 s per request
        assert all(a.status == "error" and "ServerDisconnectedError" in a.error
                   for a in attempts), [a.error for a in attempts]
        assert left == 0
    finally:
        listener.close()


def test_connections_opened_ahead_are_the_ones_requests_use(server):
    url = f"http://127.0.0.1:{server.port}"

    async def go():
        pool = ConnectionPool(Endpoint.parse(url + "/v1/completions"))
        opened = await pool.warm(40, 5.0)  # more than one batch of concurrent opens
        target = StreamTarget(url=url + "/v1/completions", timeout_s=5, chat=False,
                              headers={})
        body = json.dumps({"model": "ok"}).encode()
        sender = FastStreamSender(pool, target, lambda row: body, lambda row: N_TOKENS)
        attempts = [Attempt(row=k) for k in range(40)]
        await asyncio.gather(*(sender.begin(k, a) for k, a in enumerate(attempts)))
        await pool.close()
        return opened, attempts

    opened, attempts = asyncio.run(go())
    assert opened == 40
    assert all(a.status == "ok" and len(a.stamps) == N_TOKENS for a in attempts)
    assert server.connections == 40  # 40 concurrent requests, no connection opened for them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_opening_ahead_against_a_closed_port_gives_up_quietly():
    port = _free_port()

    async def go():
        pool = ConnectionPool(Endpoint.parse(f"http://127.0.0.1:{port}/v1/completions"))
        return await pool.warm(10, 5.0), len(pool._open)

    assert asyncio.run(go()) == (0, 0)
