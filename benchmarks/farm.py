"""A loopback feed farm for benchmarks and fault campaigns: N feeds of M entries each, with
stories told by several feeds in different words, ETags honoured, every 200 recorded."""

from __future__ import annotations

import hashlib
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from wordfreq import top_n_list

# News-like text: each story is named by a few of 20,000 English words (as frequent in the
# stories as in English, so some stories share common words and most share rare ones
# rarely); the rest of each write-up is drawn from the 2,000 most common words.
VOCABULARY = [w for w in top_n_list("en", 22_000) if w.isalpha() and len(w) > 2]
COMMON = VOCABULARY[:2_000]
TOPICAL = VOCABULARY[2_000:]


def story_terms(rng: random.Random) -> list[str]:
    return [TOPICAL[min(int(rng.paretovariate(0.6)) - 1, len(TOPICAL) - 1)]
            if rng.random() < 0.3 else rng.choice(TOPICAL) for _ in range(8)]


def write_up(rng: random.Random, terms: list[str], words: int) -> str:
    pieces = [rng.choice(terms) if rng.random() < 0.25 else rng.choice(COMMON)
              for _ in range(words)]
    return " ".join(pieces).capitalize() + "."


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients killed mid-request are what the fault campaign is about


class Farm:
    """``feeds`` feeds x ``entries`` entries; about a third of stories appear in 3 feeds."""

    def __init__(self, feeds: int, entries: int, seed: int = 7, words: int = 120):
        rng = random.Random(seed)
        self.bodies: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.guids: dict[str, list[str]] = {}
        story_count = max(1, feeds * entries * 2 // 3)
        stories = [story_terms(rng) for _ in range(story_count)]
        for feed in range(feeds):
            items = []
            guids = []
            for entry in range(entries):
                story = rng.randrange(story_count)
                terms = stories[story]
                guid = f"https://farm.example/{feed}/{entry}"
                guids.append(guid)
                title = " ".join(terms[:3]).title() + f" ({story})"
                items.append(
                    f"<item><title>{escape(title)}</title><link>{guid}</link>"
                    f"<guid>{guid}</guid><pubDate>Fri, 30 Jan 2026 "
                    f"{(entry % 24):02d}:00:00 +0000</pubDate><description>"
                    f"{escape(write_up(rng, terms, words))}</description></item>")
            body = (f"<?xml version='1.0'?><rss version='2.0'><channel><title>Feed {feed}"
                    f"</title>{''.join(items)}</channel></rss>").encode()
            path = f"/feed/{feed}.xml"
            self.bodies[path] = body
            self.etags[path] = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
            self.guids[path] = guids
        self.served: set[str] = set()
        self.requests = 0
        self._lock = threading.Lock()
        farm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms per response

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = farm.bodies.get(self.path)
                with farm._lock:
                    farm.requests += 1
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = farm.etags[self.path]
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    return
                with farm._lock:
                    farm.served.update(farm.guids[self.path])

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def urls(self) -> list[str]:
        return [self.base + path for path in self.bodies]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_farm_config(path, urls: list[str], database: str, extra: str = "") -> None:
    lines = [f'database = "{database}"', 'default_interval = "1h"', extra]
    for number, url in enumerate(urls):
        lines += ["[[sources]]", f'name = "feed {number:05d}"', f'url = "{url}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
