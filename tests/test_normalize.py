from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conftest import SEEDS

from aggregator.normalize import (
    canonical_url,
    effective_published,
    html_to_text,
    identity_keys,
    strip_boilerplate,
)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://example.com/a/b", "https://example.com/a/b"),
    ("HTTP://WWW.Example.COM:80/a/b/", "https://example.com/a/b"),
    ("https://example.com:443/a?utm_source=x&utm_medium=y&id=7", "https://example.com/a?id=7"),
    ("https://example.com/a?b=2&a=1#section", "https://example.com/a?a=1&b=2"),
    ("https://example.com/a?fbclid=abc&gclid=def", "https://example.com/a"),
    ("https://amp.example.com/news/story", "https://example.com/news/story"),
    ("https://example.com/news/story/amp/", "https://example.com/news/story"),
    ("https://example.com/news/story.amp.html", "https://example.com/news/story.html"),
    ("https://example.com:8443/x", "https://example.com:8443/x"),
    ("https://example.com//double//slash", "https://example.com/double/slash"),
    ("https://example.com/", "https://example.com/"),
    (None, None),
    ("not a url", "not a url"),
])
def test_canonical_url(url, expected):
    assert canonical_url(url) == expected


def test_html_to_text_keeps_paragraphs_and_drops_scripts():
    html = ("<p>First <b>para</b>.</p><script>alert('x')</script><p onclick='evil()'>Second"
            "<br>line</p><iframe src='x'></iframe><style>p{}</style>")
    assert html_to_text(html) == "First para.\nSecond\nline"


@pytest.mark.parametrize("seed", sorted(p.name for p in SEEDS.glob("*.txt")))
def test_seed_page_residue_is_removed(seed):
    text = strip_boilerplate((SEEDS / seed).read_text(encoding="utf-8"))
    for residue in ["How useful was this post", "Click on a star", "Vote count",
                    "Related posts", "Disclaimer", "Handpicked stories", "Read Full Article",
                    "Others are reading now", "Nepalese policemen", "pic.twitter.com",
                    "First Published", "rewritten for clarity", "Add Source Preference",
                    "South Koreas former first lady"]:
        assert residue not in text, residue
    assert "Lavrov" in text
    assert len(text.split()) > 250


def test_end_marker_early_in_the_text_does_not_cut_the_article():
    text = "Read more\n" + "\n".join(f"Sentence number {i} of the article body." for i in
                                     range(20))
    assert strip_boilerplate(text).count("Sentence number") == 20


def test_future_dates_are_clamped_to_fetch_time():
    fetched = datetime(2026, 1, 30, tzinfo=UTC)
    assert effective_published(datetime(2030, 1, 1, tzinfo=UTC), fetched) == fetched
    assert effective_published(None, fetched) == fetched
    past = datetime(2026, 1, 29, tzinfo=UTC)
    assert effective_published(past, fetched) == past
    naive = datetime(2026, 1, 29, 5)
    assert effective_published(naive, fetched) == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize(("guid", "url", "expected_first"), [
    ("https://x.example/?p=1", "https://x.example/a", "guid:https://x.example/?p=1"),
    ("tag:x.example,2026:1", None, "guid:tag:x.example,2026:1"),
    ("1234", "https://x.example/a", "guid:feed:1234"),
    (None, "https://x.example/a", "url:https://x.example/a"),
    (None, None, "hash:feed:abc"),
])
def test_identity_keys(guid, url, expected_first):
    keys = identity_keys("feed", guid, url, "abc")
    assert keys[0] == expected_first
    assert keys[-1] == "hash:feed:abc"
