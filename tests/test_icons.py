"""Site icons for the reading apps: found beside a feed's fetch on a real HTTP server on
127.0.0.1, kept only when they are raster images, asked for again only when due, and served
to the apps."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import SEEDS, write_config
from feed_server import Reply
from starlette.testclient import TestClient

from aggregator import icons
from aggregator.config import AppAccount, load_config
from aggregator.greader import auth_token
from aggregator.icons import (
    FOUND_REFRESH_S,
    ICON_BYTES,
    MISSING_RETRY_S,
    Icon,
    SiteIcons,
    icon_due,
    icon_links,
    image_type,
    site_root,
)
from aggregator.pipeline import Aggregator
from aggregator.web import create_app

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 60
ICO = b"\x00\x00\x01\x00\x01\x00" + b"\x10" * 60
ACCOUNT = AppAccount(username="reader@example.org", password="correct horse")


@pytest.mark.parametrize("checked_ago_s, has_icon, due", [
    (None, False, True),
    (60, True, False),
    (FOUND_REFRESH_S - 60, True, False),
    (FOUND_REFRESH_S, True, True),
    (60, False, False),
    (MISSING_RETRY_S - 60, False, False),
    (MISSING_RETRY_S, False, True),
])
def test_icon_due(checked_ago_s, has_icon, due):
    checked = None if checked_ago_s is None else NOW - timedelta(seconds=checked_ago_s)
    assert icon_due(checked, has_icon, NOW) is due


@pytest.mark.parametrize("data, media_type", [
    (PNG, "image/png"), (b"GIF89a...", "image/gif"), (b"GIF87a...", "image/gif"),
    (b"\xff\xd8\xff\xe0JFIF", "image/jpeg"), (ICO, "image/x-icon"),
    (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', None),
    (b"<!doctype html><title>Not found</title>", None),
    (b"", None), (b"RIFF\x10\x00\x00\x00WAVE", None),
])
def test_image_type_reads_the_first_bytes(data, media_type):
    assert image_type(data) == media_type


@pytest.mark.parametrize("feed_url, root", [
    ("https://news.example/rss/world.xml", "https://news.example/"),
    ("http://news.example:8080/feed?x=1", "http://news.example:8080/"),
    ("/srv/feeds/local.xml", None), ("file:///srv/feed.xml", None),
])
def test_site_root(feed_url, root):
    assert site_root(feed_url) == root


@pytest.mark.parametrize("html, icons", [
    (b'<link rel="apple-touch-icon" href="/touch.png"><link rel="icon" href="/i.png">',
     ["https://s.example/i.png", "https://s.example/touch.png",
      "https://s.example/favicon.ico"]),
    (b'<link rel="Shortcut Icon" href="img/f.ico">',
     ["https://s.example/blog/img/f.ico", "https://s.example/favicon.ico"]),
    (b'<base href="https://cdn.example/s/"><link rel="icon" href="i.png">',
     ["https://cdn.example/s/i.png", "https://s.example/favicon.ico"]),
    (b'<link rel="icon" href="data:image/png;base64,AAAA"><link rel="icon" '
     b'href="javascript:x"><link rel="stylesheet" href="/s.css">',
     ["https://s.example/favicon.ico"]),
    (b"", ["https://s.example/favicon.ico"]),
    (b"\x00\xff not html at all", ["https://s.example/favicon.ico"]),
])
def test_icon_links_best_kind_first_then_favicon_ico(html, icons):
    assert icon_links(html, "https://s.example/blog/") == icons


def site(feed_server, home: Reply | None, **icons: Reply) -> None:
    """A feed at /feed.xml, a home page, and icons at the given paths."""
    feed_server.route("/feed.xml", Reply(200, (SEEDS / "world-desk.rss.xml").read_bytes(),
                                         {"Content-Type": "application/rss+xml"}))
    feed_server.route("/", home or Reply(404))
    for path, reply in icons.items():
        feed_server.route("/" + path.replace("_", "."), reply)


def daemon(tmp_path, feed_server) -> Aggregator:
    path = write_config(tmp_path / "icons.toml",
                        [{"name": "Site", "url": feed_server.url("/feed.xml")}])
    return Aggregator(load_config(path, environ={}))


def paths(feed_server) -> list[str]:
    return [request.path for request in feed_server.requests]


def test_a_sites_icon_is_found_kept_and_served_to_the_apps(tmp_path, feed_server):
    home = Reply(200, b'<html><head><link rel="icon" href="/static/logo.png"></head></html>',
                 {"Content-Type": "text/html"})
    feed_server.route("/static/logo.png", Reply(200, PNG, {"Content-Type": "image/png"}))
    site(feed_server, home)
    aggregator = daemon(tmp_path, feed_server)
    try:
        [report] = aggregator.run_pass()
        assert report.outcome == "ok"
        assert paths(feed_server) == ["/feed.xml", "/", "/static/logo.png"]
        # Not due again: the next fetch asks only for the feed.
        aggregator.run_pass(force=True)
        assert paths(feed_server)[3:] == ["/feed.xml"]
        database = aggregator.store.path
        [(source_id, url, media_type, data)] = aggregator.store.db.execute(
            "SELECT source_id, url, media_type, data FROM source_icons").fetchall()
    finally:
        aggregator.close()
    assert (url, media_type, data) == (feed_server.url("/static/logo.png"), "image/png", PNG)
    web = TestClient(create_app(database, None, "https://news.example", ACCOUNT))
    served = web.get(f"/icons/{source_id}")
    assert served.content == PNG and served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert web.get(f"/icons/{source_id + 1}").status_code == 404
    assert web.get("/icons/99999999999999999999").status_code == 404
    [subscription] = web.get("/reader/api/0/subscription/list", headers={
        "Authorization": f"GoogleLogin auth={auth_token(ACCOUNT)}"}).json()["subscriptions"]
    assert subscription["iconUrl"] == f"https://news.example/icons/{source_id}"
    key = hashlib.md5(b"reader@example.org:correct horse").hexdigest()
    fever = web.post("/fever/?api&feeds&favicons", data={"api_key": key}).json()
    assert fever["feeds"][0]["favicon_id"] == source_id
    assert fever["favicons"] == [{"id": source_id,
                                  "data": "image/png;base64," + base64.b64encode(PNG).decode()}]


@pytest.mark.parametrize("icon, kept", [
    (Reply(200, b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
           {"Content-Type": "image/svg+xml"}), False),
    (Reply(200, b"<!doctype html><h1>Home</h1>", {"Content-Type": "image/x-icon"}), False),
    (Reply(200, PNG + b"\x00" * ICON_BYTES, {"Content-Type": "image/png"}), False),
    (Reply(500), False),
    (Reply(200, ICO, {"Content-Type": "text/plain"}), True),  # the bytes decide, not the type
])
def test_only_a_raster_image_within_the_limit_is_kept(tmp_path, feed_server, icon, kept):
    site(feed_server, None, favicon_ico=icon)
    aggregator = daemon(tmp_path, feed_server)
    try:
        [report] = aggregator.run_pass()
        assert report.outcome == "ok" and report.error is None
        icons = aggregator.store.db.execute("SELECT data FROM source_icons").fetchall()
        checked = aggregator.store.db.execute(
            "SELECT icon_checked_at FROM sources").fetchone()[0]
    finally:
        aggregator.close()
    assert icons == ([(ICO,)] if kept else [])
    assert checked is not None  # asked again in a week (a month when found), not every fetch
    assert paths(feed_server) == ["/feed.xml", "/", "/favicon.ico"]


def test_a_site_that_fails_leaves_the_feed_alone(tmp_path, feed_server):
    site(feed_server, Reply(500), favicon_ico=Reply(200, b"", delay_s=0.0))
    feed_server.route("/", Reply(503, headers={"Retry-After": "3600"}))
    aggregator = daemon(tmp_path, feed_server)
    try:
        [report] = aggregator.run_pass()
        row = aggregator.store.db.execute(
            "SELECT last_outcome, consecutive_errors, cooldown_until FROM sources").fetchone()
    finally:
        aggregator.close()
    assert report.outcome == "ok" and row == ("ok", 0, None)


def test_local_feeds_ask_for_no_icon(seed_config):
    aggregator = Aggregator(load_config(seed_config, environ={}))
    try:
        reports = aggregator.run_pass()
        assert all(report.outcome == "ok" for report in reports)
        assert aggregator.store.db.execute(
            "SELECT count(*) FROM sources WHERE icon_checked_at IS NOT NULL").fetchone() == (0,)
    finally:
        aggregator.close()


def test_the_feeds_of_one_site_share_one_lookup(tmp_path, feed_server):
    site(feed_server, None, favicon_ico=Reply(200, ICO, delay_s=0.3))
    for number in range(6):
        feed_server.route(f"/section{number}.xml", Reply(
            200, (SEEDS / "world-desk.rss.xml").read_bytes(),
            {"Content-Type": "application/rss+xml"}))
    path = write_config(tmp_path / "icons.toml",
                        [{"name": f"Section {n}", "url": feed_server.url(f"/section{n}.xml")}
                         for n in range(6)])
    aggregator = Aggregator(load_config(path, environ={}))
    try:
        reports = aggregator.run_pass()
        assert len(reports) == 6 and all(r.error is None for r in reports)
        assert aggregator.store.db.execute("SELECT count(*) FROM source_icons "
                                           "WHERE data = ?", [ICO]).fetchone() == (6,)
    finally:
        aggregator.close()
    assert paths(feed_server).count("/favicon.ico") == 1 and paths(feed_server).count("/") == 1


def test_site_icons_keep_the_latest_sites_only():
    icons, looked_up = SiteIcons(), []

    def finder(site):
        return lambda: looked_up.append(site) or Icon(site, "image/png", PNG)

    for number in range(SiteIcons.SITES_KEPT + 1):
        icons.icon(f"https://s{number}.example/", finder(number))
    icons.icon("https://s1.example/", finder("again"))
    icons.icon("https://s0.example/", finder("first, forgotten"))
    assert looked_up[-2:] == [SiteIcons.SITES_KEPT, "first, forgotten"]


def test_a_slow_site_gives_up_its_icon_in_time(tmp_path, feed_server, monkeypatch):
    monkeypatch.setattr(icons, "ICON_REQUEST_S", 0.5)
    monkeypatch.setattr(icons, "LOOKUP_S", 1.2)
    home = Reply(200, b"<html>" + b" " * 100, {"Content-Type": "text/html"}, trickle_s=0.2)
    site(feed_server, home, favicon_ico=Reply(200, ICO, trickle_s=0.2))
    aggregator = daemon(tmp_path, feed_server)
    try:
        started = time.monotonic()
        [report] = aggregator.run_pass()
        elapsed = time.monotonic() - started
        assert report.outcome == "ok"
        assert aggregator.store.db.execute("SELECT count(*) FROM source_icons").fetchone() \
            == (0,)
    finally:
        aggregator.close()
    assert elapsed < 10, "each request stopped at ICON_REQUEST_S, the look-up at LOOKUP_S"
