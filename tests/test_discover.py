"""Finding feeds: what a web page advertises, the usual addresses, and ``aggregator add``
against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner
from conftest import DATA, write_config
from feed_server import Reply
from test_fetch import make_aggregator, source_state

from aggregator.cli import main
from aggregator.config import load_config, source_table
from aggregator.discover import (
    USUAL_FEED_PATHS,
    find_feeds,
    known_feed_urls,
    usual_feed_urls,
)
from aggregator.errors import FetchError, ParseError
from aggregator.fetch import FetchLimits, FetchResult, Outcome, fetch, make_client
from aggregator.parse import FeedLink, advertised_feeds, looks_like_html, parse_feed

FEED = (DATA / "other_topics.rss.xml").read_bytes()
RSS = {"Content-Type": "application/rss+xml"}
HTML = {"Content-Type": "text/html; charset=utf-8"}


def page(*links: str, base: str = "", padding: int = 0) -> bytes:
    head = (f'<base href="{base}">' if base else "") + "".join(links)
    filler = "<p>Today's news, in full.</p>" * padding
    return (f"<!DOCTYPE html><html><head><title>Example News</title>{head}</head>"
            f"<body><h1>Example News</h1>{filler}</body></html>").encode()


def rss_link(href: str, title: str = "", kind: str = "application/rss+xml",
             rel: str = "alternate") -> str:
    return f'<link rel="{rel}" type="{kind}" title="{title}" href="{href}">'


@pytest.mark.parametrize("body, page_url, expected", [
    # relative, root-relative and absolute links, in page order, with their kinds
    (page(rss_link("feed.xml", "All news"), rss_link("/atom", "Atom", "application/atom+xml"),
          rss_link("https://cdn.example/j.json", "", "application/feed+json")),
     "https://news.example/world/index.html",
     [FeedLink("https://news.example/world/feed.xml", "All news", "rss"),
      FeedLink("https://news.example/atom", "Atom", "atom"),
      FeedLink("https://cdn.example/j.json", None, "json")]),
    # <base href> moves what relative links resolve against
    (page(rss_link("rss"), base="https://static.example/site/"), "https://news.example/a/b",
     [FeedLink("https://static.example/site/rss", None, "rss")]),
    # a WordPress REST API link is not a feed; JSON Feed's own type is
    (page(rss_link("https://wp.example/wp-json/wp/v2/pages/2", "", "application/json"),
          rss_link("https://wp.example/feed/json", "", "application/json")),
     "https://wp.example/", [FeedLink("https://wp.example/feed/json", None, "json")]),
    # neither a stylesheet nor an HTML alternate is a feed; rel="feed" is
    (page(rss_link("s.css", rel="stylesheet"), rss_link("/fr/", "", "text/html"),
          rss_link("/f", rel="feed")),
     "https://x.example/", [FeedLink("https://x.example/f", None, "rss")]),
    # repeats once; a type with parameters or in capitals counts; other schemes do not
    (page(rss_link("/rss"), rss_link("/rss", "again"),
          rss_link("/a", "", "Application/Atom+XML; charset=utf-8"),
          rss_link("javascript:void(0)"), rss_link("")),
     "http://x.example/", [FeedLink("http://x.example/rss", None, "rss"),
                           FeedLink("http://x.example/a", None, "atom")]),
    (b"", "https://x.example/", []),
    (b"\x00\xff garbage", "https://x.example/", []),
    # links that are no URL at all (an unclosed IPv6 address, a port beyond 65535) are
    # passed over, and such a <base href> is ignored
    (page(rss_link("http://[::1/feed"), rss_link("http://x.example:99999/f"),
          rss_link("/rss"), base="http://[::1"),
     "https://x.example/", [FeedLink("https://x.example/rss", None, "rss")]),
])
def test_advertised_feeds(body, page_url, expected):
    assert advertised_feeds(body, page_url) == expected


@pytest.mark.parametrize("body, content_type, expected", [
    (b"<p>hi</p>", "text/html", True),
    (b"<p>hi</p>", "application/xhtml+xml; charset=utf-8", True),
    (b"\xef\xbb\xbf  <!DOCTYPE html><html>", None, True),
    (b"<!-- generated --><html lang='en'>", "text/plain", True),
    (b"<?xml version='1.0'?><rss version='2.0'/>", "application/xml", False),
    (b"<feed xmlns='http://www.w3.org/2005/Atom'/>", None, False),
    (b"hello", None, False),
])
def test_looks_like_html(body, content_type, expected):
    assert looks_like_html(body, content_type) is expected


@pytest.mark.parametrize("page_url, first, count", [
    ("https://x.example/blog/2026/post.html", "https://x.example/blog/2026/feed", 24),
    ("https://x.example/blog/", "https://x.example/blog/feed", 24),
    ("https://x.example/", "https://x.example/feed", 12),
    ("https://x.example", "https://x.example/feed", 12),
])
def test_usual_feed_urls_try_the_page_folder_before_the_site_root(page_url, first, count):
    urls = usual_feed_urls(page_url)
    assert urls[0] == first and len(urls) == count == len(set(urls))
    assert urls[-len(USUAL_FEED_PATHS):] == [f"https://x.example/{p}" for p in USUAL_FEED_PATHS]


def test_a_web_page_in_place_of_a_feed_names_the_feeds_it_advertises():
    body = page(rss_link("/feed.xml"), rss_link("/comments.xml"))
    with pytest.raises(ParseError) as error:
        parse_feed(body, "s", "text/html", "https://x.example/news/")
    assert error.value.message == (
        "not an RSS, Atom or JSON feed: a web page, which names the feed "
        "https://x.example/feed.xml (and 1 more): use that as the source's url")
    with pytest.raises(ParseError, match="a web page, which names no feed"):
        parse_feed(page(), "s", "text/html", "https://x.example/")
    with pytest.raises(ParseError, match="not an RSS, Atom or JSON feed: a web page"):
        parse_feed(body, "s", "text/html")  # no address: nothing to resolve links against


@pytest.mark.parametrize("padding", [0, 400], ids=["parsed in a fetch thread",
                                                    "parsed in a worker process"])
def test_the_daemon_records_the_advertised_feed_of_a_page_configured_as_a_source(
        tmp_path, feed_server, padding):
    feed_server.route("/news/", Reply(200, page(rss_link("rss.xml"), padding=padding), HTML))
    aggregator = make_aggregator(tmp_path, feed_server, ["/news/"])
    try:
        [report] = aggregator.run_pass(force=True)
        error = source_state(aggregator, "news")["last_error"]
    finally:
        aggregator.close()
    assert report.outcome == "parse_error"
    assert feed_server.url("/news/rss.xml") in error


def getter(limits=None):
    limits = limits or FetchLimits("test")
    client = make_client(limits)
    return client, lambda url: fetch(client, url, url, None, None, limits)


@pytest.mark.parametrize("routes, start, expected_feeds, how, rejected", [
    # the address is the feed
    ({"/rss": [Reply(200, FEED, RSS)]}, "/rss", ["/rss"], "the address is a feed", []),
    # moved for good: the new address; moved for now: the one given
    ({"/old": [Reply(301, b"", {"Location": "/rss"})], "/rss": [Reply(200, FEED, RSS)]},
     "/old", ["/rss"], "the address is a feed", []),
    ({"/old": [Reply(302, b"", {"Location": "/rss"})], "/rss": [Reply(200, FEED, RSS)]},
     "/old", ["/old"], "the address is a feed", []),
    # advertised: the feeds that are feeds, the others reported with why
    ({"/": [Reply(200, page(rss_link("/a.xml"), rss_link("/missing.xml"),
                            rss_link("/b.xml", "", "application/atom+xml"),
                            rss_link("/page.xml")), HTML)],
      "/a.xml": [Reply(200, FEED, RSS)], "/b.xml": [Reply(200, FEED, RSS)],
      "/page.xml": [Reply(200, page(), HTML)]},
     "/", ["/a.xml", "/b.xml"], "advertised by the page", ["/missing.xml", "/page.xml"]),
    # nothing advertised: the usual addresses, the page's folder first
    ({"/blog/": [Reply(200, page(), HTML)], "/atom.xml": [Reply(200, FEED, RSS)]},
     "/blog/", ["/atom.xml"], "at a usual address", []),
    # a site that answers every address with its home page has no feed
    ({"/": [Reply(200, page(), HTML)]} | {f"/{p}": [Reply(200, page(), HTML)]
                                          for p in USUAL_FEED_PATHS},
     "/", [], "", []),
])
def test_find_feeds(feed_server, routes, start, expected_feeds, how, rejected):
    for path, replies in routes.items():
        feed_server.route(path, *replies)
    client, get = getter()
    with client:
        discovery = find_feeds(feed_server.url(start), get)
    assert [f.url for f in discovery.feeds] == [feed_server.url(p) for p in expected_feeds]
    assert discovery.how == how
    assert [url for url, _why in discovery.rejected] == [feed_server.url(p) for p in rejected]
    assert all(f.entries == 5 and f.format == "rss20" for f in discovery.feeds)


@pytest.mark.parametrize("page_url, expected", [
    ("https://www.reddit.com/r/worldnews/", ["https://www.reddit.com/r/worldnews/.rss"]),
    ("https://old.reddit.com/r/europe/comments/abc/title/",
     ["https://www.reddit.com/r/europe/.rss"]),
    ("https://reddit.com/u/someone", ["https://www.reddit.com/user/someone/.rss"]),
    ("https://www.youtube.com/channel/UCabc-DEF_123/videos",
     ["https://www.youtube.com/feeds/videos.xml?channel_id=UCabc-DEF_123"]),
    ("https://m.youtube.com/watch?v=x&list=PLxyz",
     ["https://www.youtube.com/feeds/videos.xml?playlist_id=PLxyz"]),
    ("https://github.com/owner/repo.js/issues", ["https://github.com/owner/repo.js/releases.atom"]),
    ("https://mastodon.example/@reporter", ["https://mastodon.example/@reporter.rss"]),
    ("https://www.youtube.com/@handle", []),  # the page advertises its feed itself
    ("https://news.example/world/", []),
    ("https://github.com/", []),
])
def test_known_feed_urls(page_url, expected):
    assert known_feed_urls(page_url) == expected


def scripted(replies: dict):
    """A fetcher for one decision: each URL's FetchResult, or the FetchError it raises."""
    def get(url):
        reply = replies.get(url, FetchError(url, f"{url} answered HTTP 404", 404))
        if isinstance(reply, FetchError):
            raise reply
        return reply
    return get


REDDIT = "https://www.reddit.com/r/worldnews/"
REDDIT_RSS = "https://www.reddit.com/r/worldnews/.rss"


@pytest.mark.parametrize("replies, how", [
    # the page refuses scripts, its feed does not
    ({REDDIT: FetchError(REDDIT, "answered HTTP 403", 403),
      REDDIT_RSS: FetchResult(Outcome.OK, REDDIT_RSS, 200, FEED, "application/atom+xml")},
     "the site's feed address"),
    # the page answers with a page
    ({REDDIT: FetchResult(Outcome.OK, REDDIT, 200, page(), "text/html"),
      REDDIT_RSS: FetchResult(Outcome.OK, REDDIT_RSS, 200, FEED, "application/atom+xml")},
     "the site's feed address"),
])
def test_find_feeds_tries_a_sites_known_feed_address(replies, how):
    discovery = find_feeds(REDDIT, scripted(replies))
    assert [f.url for f in discovery.feeds] == [REDDIT_RSS] and discovery.how == how


def test_a_refused_page_without_a_known_feed_is_the_pages_error():
    refused = FetchError(REDDIT, "answered HTTP 403", 403)
    with pytest.raises(FetchError) as error:
        find_feeds(REDDIT, scripted({REDDIT: refused}))
    assert error.value is refused


def test_find_feeds_asks_the_usual_addresses_in_order_and_stops_when_told_to(feed_server):
    feed_server.route("/blog/", Reply(200, page(), HTML))
    feed_server.route("/blog/rss", Reply(429, b"slow down", {"Retry-After": "60"}))
    client, get = getter()
    with client:
        discovery = find_feeds(feed_server.url("/blog/"), get)
    asked = [r.path for r in feed_server.requests]
    assert asked == ["/blog/", "/blog/feed", "/blog/feed/", "/blog/rss"]
    assert discovery.feeds == () and discovery.rejected[0][0] == feed_server.url("/blog/rss")


def test_find_feeds_passes_on_what_is_neither_feed_nor_page(feed_server):
    feed_server.route("/text", Reply(200, b"just some words", {"Content-Type": "text/plain"}))
    client, get = getter()
    with client, pytest.raises(ParseError, match="not an RSS, Atom or JSON feed"):
        find_feeds(feed_server.url("/text"), get)


def add(config, *args):
    return CliRunner().invoke(main, ["add", "--config", str(config), *args])


def test_add_finds_the_feed_of_a_page_and_appends_it(tmp_path, feed_server):
    feed_server.route("/news/", Reply(200, page(rss_link("/news/rss.xml", "Headlines")), HTML))
    feed_server.route("/news/rss.xml", Reply(200, FEED, RSS))
    config = write_config(tmp_path / "a.toml", [{"name": "Other", "url": "https://o.example/f"}])
    config.chmod(0o644)
    original = config.read_text()
    result = add(config, feed_server.url("/news/"), "--tag", "world", "--tag", "top",
                 "--interval", "15m", "--priority", "2")
    assert result.exit_code == 0, result.output
    assert "advertised by the page" in result.output
    assert config.read_text().startswith(original)
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o644
    source = load_config(config, environ={}).sources[1]
    assert (source.name, source.url, source.tags, source.interval_s, source.priority) == (
        "Test Wire", feed_server.url("/news/rss.xml"), ("world", "top"), 900.0, 2)
    # the page or the feed again: configured already, nothing fetched, nothing changed
    text, requests = config.read_text(), len(feed_server.requests)
    again = add(config, feed_server.url("/news/rss.xml"))
    assert again.exit_code == 0 and "configured already" in again.output
    assert config.read_text() == text and len(feed_server.requests) == requests


def test_add_lists_several_feeds_and_adds_none(tmp_path, feed_server):
    feed_server.route("/", Reply(200, page(rss_link("/posts.xml", "Posts"),
                                           rss_link("/comments.xml", "Comments")), HTML))
    feed_server.route("/posts.xml", Reply(200, FEED, RSS))
    feed_server.route("/comments.xml", Reply(200, FEED, RSS))
    config = write_config(tmp_path / "a.toml", [])
    original = config.read_text()
    result = add(config, feed_server.url("/"))
    assert result.exit_code == 1 and "names 2 feeds" in result.output
    assert feed_server.url("/posts.xml") in result.output
    assert feed_server.url("/comments.xml") in result.output
    assert config.read_text() == original


def test_add_without_a_feed_is_an_error_and_changes_nothing(tmp_path, feed_server):
    feed_server.route("/", Reply(200, page(rss_link("/gone.xml")), HTML))
    config = write_config(tmp_path / "a.toml", [])
    original = config.read_text()
    result = add(config, feed_server.url("/"))
    assert result.exit_code == 1
    assert "names no feed, and none of the usual feed addresses" in result.output
    assert f"not a feed: {feed_server.url('/gone.xml')}: " in result.output
    assert config.read_text() == original
    down = add(config, "http://127.0.0.1:9/feed")  # nothing listens on the discard port
    assert "error: cannot fetch http://127.0.0.1:9/feed: " in down.output
    feed_server.route("/text", Reply(200, b"words", {"Content-Type": "text/plain"}))
    text = add(config, feed_server.url("/text"))
    assert text.exit_code == 1 and (
        f"error: {feed_server.url('/text')}: not an RSS, Atom or JSON feed" in text.output)


@pytest.mark.parametrize(("typed", "says"), [
    ("http://[::1/feed", "Invalid IPv6 URL"),
    ("http://a.example:99999/feed", "Port out of range"),
])
def test_add_refuses_text_that_is_no_url_before_any_request(tmp_path, typed, says):
    config = write_config(tmp_path / "a.toml", [])
    original = config.read_text()
    result = add(config, typed)
    assert result.exit_code == 2 and "is not a URL" in result.output and says in result.output
    assert config.read_text() == original


def test_add_refuses_what_would_break_the_configuration(tmp_path, feed_server):
    feed_server.route("/rss", Reply(200, FEED, RSS))
    config = write_config(tmp_path / "a.toml", [])
    original = config.read_text()
    result = add(config, feed_server.url("/rss"), "--interval", "soon")
    assert result.exit_code == 1
    assert "would break the configuration" in result.output and "'interval'" in result.output
    assert config.read_text() == original
    assert not [p for p in tmp_path.iterdir() if p.name not in ("a.toml",)]


def test_add_names_unique_and_any_title_valid_toml(tmp_path, feed_server):
    titled = FEED.replace(b"<title>Test Wire</title>",
                          "<title>Wire \U0001F4F0 \"quoted\" \\ back</title>".encode(), 1)
    feed_server.route("/one", Reply(200, titled, RSS))
    feed_server.route("/two", Reply(200, titled, RSS))
    config = write_config(tmp_path / "a.toml", [])
    assert add(config, feed_server.url("/one")).exit_code == 0
    assert add(config, feed_server.url("/two")).exit_code == 0
    names = [s.name for s in load_config(config, environ={}).sources]
    assert names == ['Wire \U0001F4F0 "quoted" \\ back', 'Wire \U0001F4F0 "quoted" \\ back (2)']


def test_add_leaves_a_titles_control_characters_out_of_the_name(tmp_path, feed_server):
    feed = json.dumps({"version": "https://jsonfeed.org/version/1.1",
                       "title": "Wire\u0001 One\u0007",
                       "items": [{"id": "1", "url": "https://w.example/1",
                                  "content_text": "Harbour cranes were idle."}]}).encode()
    feed_server.route("/feed.json", Reply(200, feed, {"Content-Type": "application/feed+json"}))
    config = write_config(tmp_path / "a.toml", [])
    result = add(config, feed_server.url("/feed.json"))
    assert result.exit_code == 0, result.output
    assert [s.name for s in load_config(config, environ={}).sources] == ["Wire One"]
    assert CliRunner().invoke(main, ["export-opml", "--config", str(config)]).exit_code == 0


@pytest.mark.parametrize("typed, fetched", [
    ("feed://{host}/rss", "http://{host}/rss"),
    ("feed:http://{host}/rss", "http://{host}/rss"),
    ("  http://{host}/rss ", "http://{host}/rss"),
])
def test_add_takes_a_url_as_people_paste_it(tmp_path, feed_server, typed, fetched):
    titled = FEED.replace(b"<title>Test Wire</title>", b"<title>\n  Test\n  Wire </title>", 1)
    feed_server.route("/rss", Reply(200, titled, RSS))
    host = feed_server.base.split("://")[1]
    config = write_config(tmp_path / "a.toml", [])
    result = add(config, typed.format(host=host))
    assert result.exit_code == 0, result.output
    [source] = load_config(config, environ={}).sources
    assert (source.name, source.url) == ("Test Wire", fetched.format(host=host))


def test_add_dry_run_shows_the_table_and_changes_nothing(tmp_path, feed_server):
    feed_server.route("/rss", Reply(200, FEED, RSS))
    config = write_config(tmp_path / "a.toml", [])
    original = config.read_text()
    result = add(config, feed_server.url("/rss"), "--name", "Mine", "--full-text", "--dry-run")
    assert result.exit_code == 0 and config.read_text() == original
    assert result.output.strip() == source_table(
        "Mine", feed_server.url("/rss"), full_text=True).strip()
    # What is shown is what would be written: a table the configuration would refuse is
    # refused here too, and no temporary file is left anywhere near the configuration.
    broken = add(config, feed_server.url("/rss"), "--interval", "soon", "--dry-run")
    assert broken.exit_code == 1 and "would break the configuration" in broken.output
    assert config.read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.toml"]


def test_add_runs_where_the_daemon_secrets_are_not(tmp_path, feed_server, monkeypatch):
    monkeypatch.delenv("FEED_SECRET", raising=False)
    feed_server.route("/rss", Reply(200, FEED, RSS))
    config = write_config(tmp_path / "a.toml", [{
        "name": "Private", "url": "https://p.example/f", "username": "ann",
        "password_env": "FEED_SECRET"}])
    result = add(config, feed_server.url("/rss"))
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("FEED_SECRET", "s3cret")
    assert [s.name for s in load_config(config).sources] == ["Private", "Test Wire"]


def test_add_a_private_feed_sends_its_credentials_to_its_site_only(tmp_path, feed_server,
                                                                   monkeypatch):
    auth = {"Authorization": "Basic YW5uOnMzY3JldA==", "X-Api-Key": "k1"}  # ann:s3cret
    feed_server.route("/members/", Reply(200, page(rss_link("/members/rss.xml")), HTML,
                                         requires=auth))
    feed_server.route("/members/rss.xml", Reply(200, FEED, RSS, requires=auth))
    config = write_config(tmp_path / "a.toml", [])
    monkeypatch.setenv("FEED_SECRET", "s3cret")
    result = add(config, feed_server.url("/members/"), "--username", "ann",
                 "--password-env", "FEED_SECRET", "--header", "X-Api-Key: k1")
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert 'username = "ann"' in text and 'password_env = "FEED_SECRET"' in text
    assert 'headers = { "X-Api-Key" = "k1" }' in text and "s3cret" not in text
    [source] = load_config(config).sources
    assert source.credentials.password == "s3cret"
    assert source.credentials.headers == (("X-Api-Key", "k1"),)
    # Without them: a 401, and the hint to configure credentials.
    other = write_config(tmp_path / "b.toml", [])
    refused = add(other, feed_server.url("/members/rss.xml"))
    assert refused.exit_code == 1 and "wants credentials" in refused.output


@pytest.mark.parametrize("args, message", [
    (["--username", "ann"], "--username and --password-env come together"),
    (["--username", "ann", "--password-env", "NOT_SET_ANYWHERE"],
     "environment variable NOT_SET_ANYWHERE is not set"),
    (["--header", "no colon"], 'expected "NAME: VALUE"'),
    (["--header", "Bad Name: x"], "is not a header name"),
    (["--header", "If-None-Match: x"], "is set by the fetcher"),
])
def test_add_checks_credentials_before_any_request(tmp_path, feed_server, args, message):
    config = write_config(tmp_path / "a.toml", [])
    result = add(config, feed_server.url("/rss"), *args)
    assert result.exit_code == 2 and message in result.output
    assert feed_server.requests == []


def test_add_a_local_file_relative_to_the_configuration(tmp_path, monkeypatch):
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "local.xml").write_bytes(FEED)
    (tmp_path / "conf").mkdir()
    config = write_config(tmp_path / "conf" / "a.toml", [])
    monkeypatch.chdir(tmp_path)
    result = add(config, "feeds/local.xml")
    assert result.exit_code == 0, result.output
    assert 'url = "../feeds/local.xml"' in config.read_text()
    assert load_config(config, environ={}).sources[0].url == str(tmp_path / "feeds" / "local.xml")
    again = add(config, str(tmp_path / "feeds" / "local.xml"))
    assert "configured already" in again.output


def test_source_table_round_trips_through_the_loader(tmp_path):
    table = source_table("A \"b\"\n\tc", "https://x.example/f?a=1&b=2", tags=["t1", "t2"],
                         interval="adaptive", priority=-1, full_text=False, enabled=None)
    config = tmp_path / "c.toml"
    config.write_text('database = "x.db"\n' + table)
    [source] = load_config(config, environ={}).sources
    assert (source.name, source.url, source.tags, source.adaptive, source.priority,
            source.full_text) == ("A \"b\"\n\tc", "https://x.example/f?a=1&b=2",
                                  ("t1", "t2"), True, -1, False)
    assert "enabled" not in table and json.loads(table.split("tags = ")[1].split("\n")[0])
