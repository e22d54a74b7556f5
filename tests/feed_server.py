"""A real HTTP server on 127.0.0.1 for fetcher tests: scripted responses, recorded requests."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    delay_s: float = 0.0
    honour_etag: bool = True
    # Hostile behaviours: an endless body, or one byte every trickle_s seconds.
    endless: bool = False
    trickle_s: float = 0.0
    body_factory: object = None  # a callable returning fresh bytes on each request
    # Request headers the reply needs (credentials): without them, 401 Unauthorized.
    requires: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    at: float = 0.0
    client: tuple[str, int] | None = None  # its address: one per connection
    method: str = "GET"
    body: bytes = b""


class FeedServer:
    """Routes map a path to a list of replies, served in order (the last one repeats)."""

    def __init__(self):
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[Request] = []
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        # How far this server's clock (its Date headers) is ahead of the real one.
        self.clock_ahead_s = 0.0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms per response

            def log_message(self, *args):
                pass

            def date_time_string(self, timestamp=None):
                return super().date_time_string(
                    time.time() + server.clock_ahead_s if timestamp is None else timestamp)

            def do_POST(self):
                self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                with server._lock:
                    server.in_flight["*"] = server.in_flight.get("*", 0) + 1
                    server.max_in_flight["*"] = max(server.max_in_flight.get("*", 0),
                                                    server.in_flight["*"])
                    server.in_flight[host] = server.in_flight.get(host, 0) + 1
                    server.max_in_flight[host] = max(server.max_in_flight.get(host, 0),
                                                     server.in_flight[host])
                try:
                    self._get()
                finally:
                    with server._lock:
                        server.in_flight[host] -= 1
                        server.in_flight["*"] -= 1

            def _get(self):
                with server._lock:
                    server.requests.append(Request(self.path, dict(self.headers),
                                                   time.monotonic(), self.client_address,
                                                   self.command, getattr(self, "_body", b"")))
                    replies = server.routes.get(self.path)
                    if not replies:
                        reply = Reply(404, b"not found")
                    else:
                        reply = replies[0] if len(replies) == 1 else replies.pop(0)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if any(self.headers.get(name) != value
                       for name, value in reply.requires.items()):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="feeds"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = dict(reply.headers)
                etag = headers.get("ETag")
                if (reply.honour_etag and etag and reply.status == 200
                        and self.headers.get("If-None-Match") == etag):
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if reply.endless or reply.trickle_s:
                    self._hostile(reply)
                    return
                body = reply.body_factory() if reply.body_factory else reply.body
                if reply.gzip:
                    body = gzip.compress(body)
                    headers["Content-Encoding"] = "gzip"
                self.send_response(reply.status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _hostile(self, reply):
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Connection", "close")
                self.end_headers()
                deadline = time.monotonic() + 60
                try:
                    self.wfile.write(b"<?xml version='1.0'?><rss version='2.0'><channel>")
                    while time.monotonic() < deadline:
                        if reply.trickle_s:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(reply.trickle_s)
                        else:
                            self.wfile.write(b"<item><title>again</title></item>" * 1000)
                except OSError:
                    pass  # the client hung up, as it should
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A client that hangs up mid-answer (as the fetcher does at a size or time limit) is
        # no error of the server's: the default handler would print a traceback to stderr,
        # into whatever output a test is capturing at that moment.
        self.httpd.handle_error = lambda _request, _address: None
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.routes[path] = list(replies)

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def start(self) -> FeedServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
