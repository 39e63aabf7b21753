"""A tiny loopback HTTP proxy in front of the moto S3 server that misbehaves on purpose.

It forwards each request with http.client and can answer every Nth request with a 503 error,
cut every Nth object body short (headers announce the full length, then the connection closes),
and serve object bodies slowly (`chunk_delay` seconds per `chunk_bytes`; listings go at full speed). Counters let tests check that
the faults really happened. Used by tests/test_download.py only.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
ERROR_BODY = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 15  # socket timeout of each client connection: no handler thread hangs for ever
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_GET(self):
        self._forward()

    def do_HEAD(self):
        self._forward()

    def _forward(self):
        proxy = self.server.proxy
        is_object = self.command == "GET" and urlsplit(self.path).path.strip("/").count("/") >= 1
        fail, truncate = proxy._decide(self, is_object)
        try:
            if fail:
                body = ERROR_BODY.format(code=proxy.fail_code).encode()
                self._send(proxy.fail_status, {"Content-Type": "application/xml"}, body)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=15)
            try:
                upstream.request(self.command, self.path, headers=headers)
                response = upstream.getresponse()
                body = response.read()
                status = response.status
                out_headers = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            finally:
                upstream.close()
            if truncate and len(body) > 1 and proxy.announce_cut:
                proxy._count("truncated")
                # drop the checksum header too (older Gallery objects have none), so only a size check can tell
                out_headers = {k: v for k, v in out_headers.items() if not k.lower().startswith("x-amz-checksum")}
                self._send(status, out_headers, body[: len(body) // 2], slow=True)
            elif truncate and len(body) > 1:
                proxy._count("truncated")
                self._send(status, out_headers, body, cut_at=len(body) // 2, slow=True)
            else:
                self._send(status, out_headers, body, slow=is_object)
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True  # the client went away (killed) or stalled

    def _send(self, status: int, headers: dict, body: bytes, cut_at: int | None = None, slow: bool = False):
        proxy = self.server.proxy
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        payload = body if cut_at is None else body[:cut_at]
        delay = proxy.chunk_delay if slow else 0.0
        step = proxy.chunk_bytes if delay else max(1, len(payload))
        for start in range(0, len(payload), step):
            self.wfile.write(payload[start : start + step])
            self.wfile.flush()
            if delay and proxy._stop.wait(delay):
                break
        if cut_at is not None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: "FaultProxy"

    def handle_error(self, request, client_address):  # noqa: ARG002 - quiet on dropped clients
        pass


class FaultProxy:
    """Start with `.start()` (or as a context manager); `.url` is the endpoint to give boto3."""

    def __init__(
        self,
        upstream_url: str,
        fail_every: int = 0,
        truncate_every: int = 0,
        chunk_delay: float = 0.0,
        chunk_bytes: int = 256,
        fail_status: int = 503,
        fail_code: str = "ServiceUnavailable",  # 'SlowDown' makes botocore back off as for throttling (~1 s)
        announce_cut: bool = False,  # cut bodies carry a matching Content-Length: only the size check notices
    ):
        split = urlsplit(upstream_url)
        self.upstream_host, self.upstream_port = split.hostname, split.port
        self.fail_every, self.truncate_every = fail_every, truncate_every
        self.chunk_delay, self.chunk_bytes = chunk_delay, chunk_bytes
        self.fail_status, self.fail_code, self.announce_cut = fail_status, fail_code, announce_cut
        self.counts: Counter = Counter()  # requests, object_gets, failed, truncated, signed
        self.object_gets: Counter = Counter()  # key path -> number of GETs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _decide(self, handler: BaseHTTPRequestHandler, is_object: bool) -> tuple[bool, bool]:
        with self._lock:
            self.counts["requests"] += 1
            if handler.headers.get("Authorization"):
                self.counts["signed"] += 1
            fail = bool(self.fail_every) and self.counts["requests"] % self.fail_every == 0
            if fail:
                self.counts["failed"] += 1
                return True, False
            if not is_object:
                return False, False
            self.counts["object_gets"] += 1
            self.object_gets[unquote(urlsplit(handler.path).path)] += 1
            truncate = bool(self.truncate_every) and self.counts["object_gets"] % self.truncate_every == 0
            return False, truncate

    def start(self) -> "FaultProxy":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
