from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import pickle
import re
import sqlite3
import subprocess
import sys
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from conftest import SEEDS, requires_kernels
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import fingerprint as fingerprint_module
from aggregator.fingerprint import (
    _WORD,
    TermsLeftInStore,
    TermStatistics,
    Vocabulary,
    count_words,
    fingerprint_of,
    first_surface_words,
    first_word,
    give_priors_ahead,
    given_priors,
    log_tf_idf_python,
    normalised_positions,
    prior_document_fraction,
    salient_terms,
    strongest_python,
    term_of,
    term_weights,
    text_features,
    tokenize,
    tokenize_regex,
)
from aggregator.normalize import (
    ascii_folded,
    canonical_url,
    content_hash,
    effective_published,
    html_to_text,
    identity_keys,
    normalize_entry,
    strip_boilerplate,
)
from aggregator.parse import ParsedEntry
from aggregator.store import to_iso


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


@pytest.mark.parametrize(("author", "expected"), [
    ("  Ann Lee ", "Ann Lee"),
    ("Ann\x02 Lee\n\tand\x7f Bo", "Ann Lee and Bo"),
    ("\x01\x02", None),
    (None, None),
    ("A" * 5000, "A" * 1000),
])
def test_an_author_is_one_line_of_text(author, expected):
    entry = ParsedEntry(guid="g", link="https://a.example/1", title="Harbour",
                        content="<p>Cranes.</p>", author=author)
    assert normalize_entry(entry, "s", datetime(2026, 1, 30, tzinfo=UTC)).author == expected


def test_future_dates_are_clamped_to_fetch_time():
    fetched = datetime(2026, 1, 30, tzinfo=UTC)
    assert effective_published(datetime(2030, 1, 1, tzinfo=UTC), fetched) == fetched
    assert effective_published(None, fetched) == fetched
    past = datetime(2026, 1, 29, tzinfo=UTC)
    assert effective_published(past, fetched) == past
    naive = datetime(2026, 1, 29, 5)
    assert effective_published(naive, fetched) == naive.replace(tzinfo=UTC)


@pytest.mark.parametrize(("published", "fetched", "expected"), [
    # The store keeps whole seconds, so the clusterer must see whole seconds too.
    (datetime(2026, 1, 29, 5, 0, 12, 999999, tzinfo=UTC), datetime(2026, 1, 30, tzinfo=UTC),
     datetime(2026, 1, 29, 5, 0, 12, tzinfo=UTC)),
    (datetime(2026, 1, 29, 7, 0, 12, 500000, tzinfo=timezone(timedelta(hours=2))),
     datetime(2026, 1, 30, tzinfo=UTC), datetime(2026, 1, 29, 5, 0, 12, tzinfo=UTC)),
    (None, datetime(2026, 1, 30, 0, 0, 1, 250000, tzinfo=UTC),
     datetime(2026, 1, 30, 0, 0, 1, tzinfo=UTC)),
])
def test_an_article_is_dated_to_the_whole_second_as_stored(published, fetched, expected):
    entry = ParsedEntry(guid="g", link=None, title="A title", published=published,
                        content="<p>Some text.</p>")
    article = normalize_entry(entry, "desk", fetched)
    assert article.published == expected
    assert article.fetched == fetched.replace(microsecond=0)


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


# The byte-table fast paths must give exactly what the regular expressions give: a stored
# content hash that changed would make every stored entry look new.
def reference_content_hash(title: str, text: str) -> str:
    folded = re.sub(r"\W+", " ", f"{title}\n{text}".casefold()).strip()
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


def reference_word_count(text: str) -> int:
    return len(_WORD.findall(text))


def reference_iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Snowball English stems (the stored terms, so a stemmer that stems otherwise would split the
# statistics of a store it takes over), and the tokens that are no content words.
@pytest.mark.parametrize(("token", "term"), [
    ("running", "run"), ("generously", "generous"), ("nations", "nation"),
    ("diplomacy", "diplomaci"), ("connection", "connect"), ("skies", "sky"), ("dying", "die"),
    ("news", "news"), ("lying", "lie"), ("castigated", "castig"), ("negotiators", "negoti"),
    ("ukrainian", "ukrainian"), ("2026", "2026"), ("the", None), ("a", None), ("42", None),
])
def test_tokens_become_snowball_english_terms(token, term):
    assert term_of(token) == term


def test_the_term_cache_stays_bounded_and_gives_the_same_terms_after_it_is_cleared(
        monkeypatch):
    monkeypatch.setattr(fingerprint_module, "_TERM_OF", {})
    monkeypatch.setattr(fingerprint_module, "_TERM_CACHE_SIZE", 5)
    tokens = ["running", "the", "nations", "ukrainian", "skies", "dying", "diplomacy", "42"]
    first = [term_of(token) for token in tokens]
    assert len(fingerprint_module._TERM_OF) <= 5
    assert [term_of(token) for token in reversed(tokens)] == first[::-1]
    assert first == ["run", None, "nation", "ukrainian", "sky", "die", "diplomaci", None]
    assert len(fingerprint_module._TERM_OF) <= 5


def test_a_word_that_is_its_own_stem_is_cached_as_one_string(monkeypatch):
    monkeypatch.setattr(fingerprint_module, "_TERM_OF", {})
    # Built at run time, so that it is not the interned literal.
    word = "".join(["ukrain", "ian"])
    assert term_of(word) is word
    assert fingerprint_module._TERM_OF[word] is word


WORDY = [
    "", " ", "'", "''", "a", "_", "__init__ x_y", "Russia’s top diplomat’s", "don''t", "'quoted'",
    "a'b'c", "a' b", "'a", "a'", "‘Shadow Diplomacy’ — “deal” … end", "3.5 million, 1,000",
    "\u00a0non\u00a0breaking\u00a0", "café naïve", "Kelvin \u212a", "tab\tnew\nline\r\x0b\x0c",
    "ﬁ ligature", "ǅ title-case", "x’’y", "’s", "it’s—‘so’",
]


@pytest.mark.parametrize("text", WORDY)
def test_word_count_and_hash_fast_paths_match_the_regular_expressions(text):
    assert count_words(text) == reference_word_count(text)
    assert content_hash(text, text[::-1]) == reference_content_hash(text, text[::-1])


def test_typographic_punctuation_is_folded_and_other_text_is_not():
    assert ascii_folded("It’s “here” — now…") == b"It's  here    now "
    assert ascii_folded("café") is None
    assert ascii_folded("plain") == b"plain"


news_text = st.text(alphabet=st.sampled_from(
    list("abcXYZ09_ '’‘“”—–…\u00a0\t\n.,-") + ["é", "ß", "\u212a", "ǅ"]), max_size=60)


@given(news_text, st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_fast_paths_match_the_regular_expressions_on_any_text(text, other):
    for sample in (text, other, text + other):
        assert count_words(sample) == reference_word_count(sample)
    assert content_hash(text, other) == reference_content_hash(text, other)


def reference_first_surface_words(tokens: list[str]) -> dict[str, str]:
    first: dict[str, str] = {}
    for token in tokens:
        term = term_of(token)
        if term is not None and term not in first:
            first[term] = token
    return first


def reference_term_counts(title_tokens: list[str], text_tokens: list[str],
                          title_weight: float) -> dict[str, float]:
    counts: dict[str, float] = {}
    for tokens, weight in ((text_tokens, 1.0), (title_tokens, title_weight)):
        for term in map(term_of, tokens):
            if term is not None:
                counts[term] = counts.get(term, 0.0) + weight
    return counts


def assert_features_follow_their_definitions(title: str, text: str) -> None:
    assert tokenize(text) == tokenize_regex(text)
    title_tokens, text_tokens = tokenize_regex(title), tokenize_regex(text)
    [features] = text_features([(title, text)], fingerprint_module.Signer(16), 3, 2.5)
    counts = reference_term_counts(title_tokens, text_tokens, 2.5)
    # The same terms in the same order, and counts equal to the bit.
    assert features.term_list == list(counts)
    assert features.counts.tolist() == list(counts.values())
    first = reference_first_surface_words(title_tokens + text_tokens)
    assert features.first_word_list == [first[term] for term in counts]
    assert first_surface_words(title_tokens + text_tokens) == first
    # The title's terms, each once, in title order.
    assert features.title_term_list == [term for term in dict.fromkeys(map(term_of,
                                                                          title_tokens))
                                        if term is not None]


@pytest.mark.parametrize("text", [*WORDY, "Russia's talks' end; Russia’s TALKS", "A b. A, B!",
                                  "Ôl’s IT'S it’s Its", "x" * 3 + "'s" + " x'S"])
def test_tokens_and_term_counts_follow_their_definitions(text):
    assert_features_follow_their_definitions(text[::-1], text)


ascii_text = st.text(alphabet=st.sampled_from(list("abcXYZ09_ '.,-\t\n\"")), max_size=60)


@given(st.one_of(ascii_text, news_text), st.one_of(ascii_text, news_text))
@settings(max_examples=400, deadline=None)
def test_tokens_and_term_counts_follow_their_definitions_on_any_text(title, text):
    assert_features_follow_their_definitions(title, text)
    assert tokenize(title + text) == tokenize_regex(title + text)


def test_tokens_and_term_counts_of_the_seeds_follow_their_definitions():
    texts = [path.read_text(encoding="utf-8") for path in sorted(SEEDS.glob("*"))
             if path.is_file()]
    assert texts
    for text in texts:
        assert_features_follow_their_definitions(text[:200], text)


@pytest.mark.parametrize("value", [
    datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(1, 1, 1, tzinfo=UTC), datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(1000, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
])
def test_iso_times_are_written_as_strftime_writes_them(value):
    assert to_iso(value) == reference_iso(value)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-9, minutes=-30)),
                                               timezone(timedelta(hours=14))])))
@settings(max_examples=300, deadline=None)
def test_iso_times_match_strftime_for_any_time(value):
    assert to_iso(value) == reference_iso(value)


def reference_weights(term_counts: dict[str, float], stats: TermStatistics) -> dict[str, float]:
    """Log-TF x IDF as ``TermStatistics`` defines it, term by term."""
    weights = {}
    for term, count in term_counts.items():
        if count > 0:
            idf = math.log((stats.documents + stats.prior_docs) / (
                stats.frequency(term) + stats.prior_docs * stats.prior(term)
                + 0.5))
            weight = (1.0 + math.log(count)) * idf
            if weight > 0:
                weights[term] = weight
    return weights


def reference_vector(weights: dict[str, float], limit: int) -> dict[str, float]:
    if 0 < limit < len(weights):
        weights = dict(sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:limit])
    norm = math.sqrt(sum(w * w for w in weights.values()))
    return {t: w / norm for t, w in weights.items()} if norm else {}


def reference_salient(weights: dict[str, float], titles: list[str], limit: int):
    vector = reference_vector(weights, 0)
    chosen = [t for t in titles if t in vector][:limit]
    for term, _ in sorted(vector.items(), key=lambda item: (-item[1], item[0])):
        if len(chosen) >= limit:
            break
        if term not in chosen:
            chosen.append(term)
    return tuple(sorted(chosen))


def normalised(terms: list[str], weights: np.ndarray, limit: int = 0) -> dict[str, float]:
    """The vector that ``normalised_positions`` chooses, by name."""
    chosen, values = normalised_positions(terms, weights, limit)
    return {terms[position]: value for position, value in zip(chosen, values, strict=True)}


def weigh(term_counts: dict[str, float], stats: TermStatistics):
    terms, weights, ids = term_weights(list(term_counts),
                                       np.array(list(term_counts.values()), dtype=float), stats)
    assert ids.tolist() == [stats.vocabulary.ids[term] for term in terms]
    return terms, weights


def test_equal_weights_are_ranked_by_term_and_title_terms_come_first():
    stats = TermStatistics(prior_docs=10)
    stats.restore(100, [(1, "common", 60, 0.5), (2, "rare", 1, 0.001), (3, "rarer", 1, 0.001),
                        (4, "zeta", 1, 0.001), (5, "alpha", 1, 0.001),
                        (6, "ubiquitous", 200, 0.9)])
    counts = {"zeta": 2.0, "common": 3.0, "rare": 1.0, "alpha": 2.0, "rarer": 1.0,
              "ubiquitous": 5.0, "never": 0.0}
    terms, weights = weigh(counts, stats)
    # No weight: seen in more documents than there are, or never counted in the article.
    assert terms == ["zeta", "common", "rare", "alpha", "rarer"]
    assert list(normalised(terms, weights, 3)) == ["alpha", "zeta", "rare"]
    assert list(normalised(terms, weights)) == terms
    assert math.isclose(sum(w * w for w in normalised(terms, weights, 3).values()), 1.0)
    assert salient_terms(terms, weights, ["common"], 3) == ("alpha", "common", "zeta")
    assert salient_terms(terms, weights, ["never", "rarer"], 2) == ("alpha", "rarer")
    assert salient_terms([], np.zeros(0), ["common"], 3) == ()


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "ab", "ba"]),
                       st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0, 6.0]), max_size=10),
       st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "ab"]),
                       st.integers(0, 30), max_size=6),
       st.lists(st.sampled_from(["a", "c", "h", "zz"]), max_size=4, unique=True),
       st.integers(0, 12), st.integers(1, 8))
@settings(max_examples=300, deadline=None)
def test_weights_vectors_and_salient_terms_equal_their_definitions(counts, frequencies, titles,
                                                                   vector_limit, salient_limit):
    """Computed for a whole article at once, to the last bit of what the definitions give
    term by term: equal weights (the many terms seen as often) must stay equal, for their
    names to break the tie."""
    stats = TermStatistics(prior_docs=20)
    stats.restore(25, [(term_id, term, frequency, 0.01 if term < "c" else 0.2)
                       for term_id, (term, frequency) in enumerate(frequencies.items(), 1)])
    terms, weights = weigh(counts, stats)
    expected = reference_weights(counts, stats)
    assert dict(zip(terms, weights.tolist(), strict=True)) == expected
    assert terms == list(expected)
    vector = normalised(terms, weights, vector_limit)
    assert vector == reference_vector(expected, vector_limit)
    assert list(vector) == list(reference_vector(expected, vector_limit))
    assert salient_terms(terms, weights, titles, salient_limit) == reference_salient(
        expected, titles, salient_limit)
    # A caller that knows every title term is weighted is spared the search for them.
    weighted_titles = [term for term in titles if term in terms]
    assert salient_terms(terms, weights, weighted_titles, salient_limit,
                         titles_weighted=True) == reference_salient(
        expected, weighted_titles, salient_limit)


def test_a_title_with_more_terms_than_the_salient_set_keeps_its_first_ones():
    """With more content terms in the title than salient terms, the first ones in title
    order are kept, the same in every process (a set's order follows the string hashes,
    which change from one process to the next)."""
    words = [f"{name}word" for name in ("zulu", "alpha", "mike", "echo", "kilo", "bravo",
                                        "yankee", "delta", "lima", "golf")]
    title = " ".join(words)
    [features] = text_features([(title, title + ". More text here.")],
                               fingerprint_module.Signer(16), 3, 2.5)
    stats = TermStatistics(prior_docs=10)
    fingerprint = fingerprint_of(features, stats, fingerprint_module.Signer(16), 4)
    assert features.title_term_list == [term_of(word) for word in words]
    assert fingerprint.salient == tuple(sorted(term_of(word) for word in words[:4]))
    script = ("from aggregator.fingerprint import Signer, TermStatistics, fingerprint_of, "
              "text_features\n"
              f"[f] = text_features([({title!r}, {title!r})], Signer(16), 3, 2.5)\n"
              "print(fingerprint_of(f, TermStatistics(prior_docs=10), Signer(16), 4).salient)")
    seen = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}
                           ).stdout for seed in (1, 2, 3)}
    assert len(seen) == 1


@pytest.mark.parametrize(("term", "kept", "word"), [
    ("report", "reported", "reported"),  # a word that stems to another term: kept as it is
    ("talk", "talks", "talks"),
    ("geneva", "", "geneva"),            # the term was its own first word: nothing kept
    ("lavrov_talk", "", ""),             # a phrase has no word of its own
])
def test_the_first_words_keep_nothing_where_a_term_is_its_own(term, kept, word):
    assert first_word(term, kept) == word


def test_prepared_first_words_keep_nothing_for_a_term_that_is_its_own_first_word():
    [features] = text_features([("Geneva talks", "Lavrov reported the talks in geneva.")],
                               fingerprint_module.Signer(16), 3, 2.5)
    kept = dict(zip(features.term_list, features.first_words.split(" "), strict=True))
    assert kept == {"geneva": "", "talk": "talks", "lavrov": "", "report": "reported"}
    assert dict(zip(features.term_list, features.first_word_list, strict=True)) == \
        first_surface_words(tokenize("Geneva talks") + tokenize(
            "Lavrov reported the talks in geneva."))


def test_a_fingerprint_learns_its_new_terms_priors_before_it_weighs_them():
    """``fingerprint_of`` learns priors only for an article that brings a term without
    one (the compiled weighing tells): each fingerprint must be the one weighed after
    learning every time, whichever articles bring new terms."""
    signer = fingerprint_module.Signer(16)
    articles = [("Geneva talks", "Lavrov reported the talks in Geneva were useful."),
                ("Geneva talks", "Lavrov reported the talks in Geneva."),  # nothing new
                ("Running markets", "Traders were running from falling markets."),
                ("Geneva talks resume", "Lavrov reported that talks resumed in Geneva.")]
    fused, reference = TermStatistics(prior_docs=10), TermStatistics(prior_docs=10)
    for article_id, features in enumerate(text_features(articles, signer, 3, 2.5), 1):
        fingerprint = fingerprint_of(features, fused, signer, 24)
        terms = features.term_list
        ids = reference.ids_of(terms)
        reference.learn_priors(ids, terms, features.first_words, features.prior_positions,
                               features.priors)
        weighted, weights, _ids = term_weights(terms, features.counts, reference, ids)
        assert fingerprint.weighted_terms == weighted
        assert fingerprint.weights.tolist() == weights.tolist()
        # Learned from the first word ("running", "reported"), not the stem.
        assert fused.priors_of(fingerprint.term_ids, terms).tolist() == \
            reference.priors_of(ids, terms).tolist()
        assert (fused._prior[fingerprint.term_ids] != TermStatistics.UNKNOWN).all()
        fused.add_document(fingerprint.term_ids, article_id)
        reference.add_document(ids, article_id)


def terms_and_first_words(text: str, phrases: tuple[str, ...] = ()) -> tuple[str, str]:
    """``TextFeatures``' terms and first words of a text (phrases have no first word)."""
    first = first_surface_words(tokenize(text))
    return " ".join([*first, *phrases]), " ".join([*first.values(), *([""] * len(phrases))])


def split(features: tuple[str, str]) -> tuple[list[str], list[str]]:
    return features[0].split(" "), features[1].split(" ")


def test_a_worker_loads_the_english_list_as_it_starts_giving_priors(monkeypatch):
    # Loaded with the first article instead, it held up the writer's first source 0.2 s.
    monkeypatch.setattr(fingerprint_module, "_english", None)
    monkeypatch.setattr(fingerprint_module, "_giving_priors", False)
    give_priors_ahead()
    assert fingerprint_module._english is not None
    assert fingerprint_module._giving_priors


def test_priors_given_ahead_are_learned_as_the_writer_would_work_them_out(monkeypatch):
    monkeypatch.setattr(fingerprint_module, "_priors_given", set())
    first = terms_and_first_words("Lavrov said the talks in Geneva were useful",
                                  ("lavrov_talk",))
    second = terms_and_first_words("Geneva talks: Lavrov's aides and Blinken's aides")
    # Outside a worker process nothing is given: the writer works priors out itself.
    monkeypatch.setattr(fingerprint_module, "_giving_priors", False)
    assert [len(part) for part in given_priors(*split(first))] == [0, 0]
    monkeypatch.setattr(fingerprint_module, "_giving_priors", True)
    positions, priors = given_priors(*split(first))
    terms, words = first[0].split(" "), first[1].split(" ")
    # Nothing given before; a phrase is never given: its prior follows its words'.
    assert positions.tolist() == list(range(len(terms) - 1))
    assert priors.tolist() == [prior_document_fraction(w) for w in words[:-1]]
    # The second article's terms that the first gave are not given again.
    again, again_priors = given_priors(*split(second))
    second_terms = second[0].split(" ")
    assert [second_terms[i] for i in again.tolist()] == [
        t for t in second_terms if t not in terms]

    with_given, alone = TermStatistics(prior_docs=10), TermStatistics(prior_docs=10)

    def learn(stats, features, given_at=None, given=None):
        terms = features[0].split(" ")
        stats.learn_priors(stats.ids_of(terms), terms, features[1], given_at, given)

    learn(with_given, first, positions, priors)
    learn(alone, first)
    # Only some given (a process that gave the rest with an article the writer skipped),
    # and a prior given for a term the statistics know already: neither changes anything.
    learn(with_given, second, again[:1], again_priors[:1])
    learn(alone, second)
    learn(with_given, first, positions, np.full(len(positions), 0.25))
    everything = [*terms, *second_terms]
    assert [with_given.prior(t) for t in everything] == [alone.prior(t) for t in everything]
    assert alone.prior("lavrov") == prior_document_fraction("Lavrov")
    assert alone.prior("lavrov_talk") == 0.1 * min(alone.prior("lavrov"), alone.prior("talk"))
    # A wrong value given is learned as given: the comparison above can fail.
    wrong = TermStatistics(prior_docs=10)
    learn(wrong, first, positions, np.full(len(positions), 0.25))
    assert wrong.prior("lavrov") == 0.25


def test_a_term_named_before_it_is_counted_has_no_frequency_yet():
    vocabulary = Vocabulary()
    for number in range(2000):
        vocabulary.id(f"t{number}")
    stats = TermStatistics(10, vocabulary)
    vocabulary.id("later")  # beyond the arrays: named (a vector's term) but never counted
    assert stats.frequency("later") == 0 and stats.frequency("never") == 0
    stats.add_document(stats.ids_of(["later", "t5"]))
    stats.add_document(stats.ids_of(["t5"]))
    assert stats.frequency("later") == 1 and stats.frequencies() == {"later": 1, "t5": 2}
    assert stats.documents == 2


def vocabulary_state(vocabulary: Vocabulary) -> tuple:
    size = len(vocabulary.terms)
    return (dict(vocabulary.ids), list(vocabulary.terms), vocabulary.stored[:size].tolist(),
            vocabulary.hashed[:size].tolist(), len(vocabulary.stored), vocabulary.next_stored,
            list(vocabulary._free))


@pytest.mark.parametrize(("known", "forgotten", "rows"), [
    ([], [], [(5, "a"), (3, "b"), (9, "c")]),
    ([], [], [(5, "a"), (3, "b"), (5, "a"), (12, "c")]),  # a term twice in the rows
    (["x", "y"], [], [(40, "y"), (41, "z"), (42, "x"), (43, "w")]),  # some in memory
    (["x", "y", "v"], ["y"], [(40, "p"), (41, "q"), (42, "x")]),  # a number is free
    ([], [], [(n + 7, f"t{n}") for n in range(3000)]),  # the arrays grow twice
])
def test_terms_restored_together_get_what_they_get_one_by_one(known, forgotten, rows):
    """A start-up numbers the terms it brings back in one pass: the numbers, ids, arrays
    and their sizes are those of one ``restore`` per term."""
    together, one_by_one = Vocabulary(), Vocabulary()
    for vocabulary in (together, one_by_one):
        for term in known:
            vocabulary.id(term)
        vocabulary.forget([vocabulary.ids[term] for term in forgotten])
    stored_ids, terms = zip(*rows, strict=True)
    numbers = together.restore_many(stored_ids, terms)
    assert numbers == [one_by_one.restore(stored_id, term) for stored_id, term in rows]
    assert vocabulary_state(together) == vocabulary_state(one_by_one)


def recording_store(stored: dict) -> tuple:
    """A store's recall of term rows by key (name or id), and the keys it was asked for."""
    asked: list[list] = []

    def recall(keys):
        asked.append(keys)
        return [stored[key] for key in keys if key in stored]

    return recall, asked


def test_forgotten_terms_come_back_with_their_ids_counts_and_priors():
    stored = {"alpha": (1, "alpha", 5, 0.01, 10), "beta": (2, "beta", 1, 0.002, 3),
              "gamma": (3, "gamma", 2, 0.003, 4)}
    recall, asked = recording_store(stored)
    stats = TermStatistics(prior_docs=10)
    stats.recall = recall
    # A restart that read the terms of article 4 on: beta stays in the store, id 3 is the
    # highest stored.
    stats.restore_recent(12, 4, [stored["alpha"], stored["gamma"]], left_in_store=["beta"])
    assert set(stats.vocabulary.ids) == {"alpha", "gamma"} and stats.incomplete
    vocabulary = stats.vocabulary
    ids = stats.ids_of(["beta", "delta", "alpha"])
    # beta as stored, delta new after every stored id, and never asked for: it was not
    # left in the store
    assert vocabulary.stored_ids(ids).tolist() == [2, 4, 1]
    assert asked == [["beta"]]
    assert stats.frequency("beta") == 1 and stats.prior("beta") == 0.002
    stats.add_document(stats.ids_of(["delta", "alpha"]), article_id=11)
    assert asked == [["beta"]]  # both in memory now
    # Not counted in article 5 or later: beta (3) and gamma (4) leave memory.
    numbers = len(vocabulary)
    assert stats.forget_unseen_since(5) == 2
    assert set(vocabulary.ids) == {"alpha", "delta"}
    assert stats.forget_unseen_since(5) == 0  # no term is forgotten twice
    # Numbers given back go to the terms that come next, recalled or new.
    assert vocabulary.stored_ids(stats.ids_of(["gamma"])).tolist() == [3]
    assert stats.frequencies() == {"alpha": 6, "gamma": 2, "delta": 1}
    epsilon = stats.ids_of(["epsilon"])
    assert asked == [["beta"], ["gamma"]]  # gamma was forgotten; epsilon never stored
    assert vocabulary.stored_ids(epsilon).tolist() == [5]  # a store id of its own
    assert stats.frequency("epsilon") == 0 and stats.last_articles_of(epsilon).tolist() == [0]
    assert len(vocabulary) == numbers and vocabulary.seen == 5
    # A term that the window's vectors hold stays, however long unseen.
    held = np.zeros(len(vocabulary), dtype=bool)
    held[vocabulary.ids["gamma"]] = True
    assert stats.forget_unseen_since(5, held) == 1  # epsilon, never counted
    assert set(vocabulary.ids) == {"alpha", "delta", "gamma"}


@pytest.mark.parametrize(("bits", "added", "most_false_held"), [
    (TermsLeftInStore.BITS, 0, 0.0),  # empty: holds nothing
    (TermsLeftInStore.BITS, 50_000, 0.0001),
    (TermsLeftInStore.BITS, 290_000, 0.002),  # the chance it gives: 0.001
    (1 << 12, 2_000, 1.0),  # full: holds nearly everything, still every name added
])
def test_terms_left_in_store_hold_every_name_added_and_few_others(bits, added, most_false_held):
    left = TermsLeftInStore(bits)
    names = [f"term{n}" for n in range(added)]
    left.add(iter(names))  # in chunks, from any iterable
    assert bool(left) == bool(added)
    assert left.among(names) == names
    others = [f"other{n}" for n in range(20_000)]
    assert len(left.among(others)) / len(others) <= most_false_held
    left.add(names[:10])  # again: nothing changes for the others
    assert left.among(names) == names


def test_terms_a_restart_left_in_the_store_are_all_asked_for_until_their_names_are_read(
        caplog):
    # A restart reads the names of the terms it leaves in the store in a thread
    # (``pipeline.read_terms_left_by_restart``): until they are in, every term new to memory
    # is looked up; after, only those the names hold.
    stored = {"beta": (2, "beta", 1, 0.002, 3), "gamma": (3, "gamma", 2, 0.003, 4)}
    recall, asked = recording_store(stored)
    stats = TermStatistics(prior_docs=10)
    stats.recall = recall
    reading: Future[TermsLeftInStore] = Future()
    stats.restore_recent(12, 4, [(1, "alpha", 5, 0.01, 10)], left_in_store=reading)
    stats.ids_of(["beta", "delta", "alpha"])
    assert asked == [["beta", "delta"]]
    left = TermsLeftInStore()
    left.add(["beta", "gamma"])
    reading.set_result(left)
    stats.ids_of(["gamma", "epsilon"])
    assert asked == [["beta", "delta"], ["gamma"]]
    assert stats.incomplete and stats.frequency("gamma") == 2
    # Names that could not be read: every term new to memory is looked up, as before.
    failed = TermStatistics(prior_docs=10)
    failed.recall = recall
    unreadable: Future[TermsLeftInStore] = Future()
    unreadable.set_exception(sqlite3.OperationalError("database is locked"))
    failed.restore_recent(12, 4, [], left_in_store=unreadable)
    with caplog.at_level(logging.WARNING, logger="aggregator.fingerprint"):
        failed.ids_of(["zeta"])
    assert asked[-1] == ["zeta"]
    assert "could not be read (database is locked)" in caplog.text


def test_terms_left_in_store_merge_what_another_filter_holds():
    left, other = TermsLeftInStore(), TermsLeftInStore()
    left.merge(other)  # nothing added to either
    assert not left
    other.add(["beta"])
    left.merge(other)
    left.add(["gamma"])
    assert left.among(["beta", "gamma"]) == ["beta", "gamma"] and left.added == 2
    with pytest.raises(ValueError, match="different sizes"):
        left.merge(TermsLeftInStore(1 << 10))
    left.hold_everything()
    assert left.among(["anything", "at all"]) == ["anything", "at all"]


def test_terms_left_in_store_stay_in_their_process():
    left = TermsLeftInStore()
    left.add(["harbour"])
    with pytest.raises(TypeError, match="salted string hashes"):
        pickle.dumps(left)
    with pytest.raises(ValueError, match="a power of two"):
        TermsLeftInStore(1000)


def test_stored_vectors_are_numbered_as_their_terms_are_in_memory(caplog):
    # A restart reads the vectors of the window, which name terms by store id: terms not
    # in memory (unseen by the latest articles, but in an older member of a live story)
    # come back by id; an id the store lacks becomes padding, with a warning.
    stored = {7: (7, "alpha", 3, 0.01, 40), 9: (9, "beta", 1, 0.002, 12)}
    recall_ids, asked = recording_store(stored)
    stats = TermStatistics(prior_docs=10)
    stats.recall_ids = recall_ids
    stats.restore_recent(50, 12, [stored[7]], left_in_store=["beta"])
    vectors = np.array([[7, 9, 0], [9, 11, 7]], dtype=np.int32)
    with caplog.at_level(logging.WARNING, logger="aggregator.fingerprint"):
        numbers = stats.numbers_of_stored(vectors)
    assert asked == [[9, 11]]
    vocabulary = stats.vocabulary
    assert numbers.dtype == vectors.dtype
    assert vocabulary.stored_ids(numbers).tolist() == [[7, 9, 0], [9, 0, 7]]
    assert numbers[0, 2] == 0 and numbers[1, 1] == 0
    assert stats.frequency("beta") == 1 and stats.prior("beta") == 0.002
    assert "1 terms of stored vectors are missing" in caplog.text


def test_statistics_loaded_whole_never_ask_the_store():
    stats = TermStatistics(prior_docs=10)
    stats.recall = lambda terms: pytest.fail(f"asked for {terms}")
    stats.restore_recent(3, 3, [(1, "alpha", 2, 0.01, 2), (2, "beta", 1, 0.01, 1)],
                         left_in_store=[])
    assert not stats.incomplete
    assert stats.ids_of(["alpha", "new"]).tolist() == [1, 3]


@requires_kernels
@pytest.mark.parametrize(("terms", "documents", "prior_docs", "seed"), [
    (0, 0, 2000.0, 1),  # an article of no term
    (1, 0, 2000.0, 2),  # the first article: every frequency 0
    (300, 5_000, 2000.0, 3),
    (300, 5_000_000, 1.0, 4),  # almost no prior
    (1000, 123_457, 10, 5),  # a prior of an int, as TermStatistics may be given
])
def test_the_compiled_weights_are_the_python_ones_to_the_last_bit(terms, documents,
                                                                   prior_docs, seed):
    generator = np.random.default_rng(seed)
    # Title terms count title_weight times; phrases a fraction of a word.
    counts = generator.choice([1.0, 2.0, 3.0, 4.5, 0.3, 17.0], terms)
    frequency = generator.integers(0, max(1, documents), terms, dtype=np.int32)
    priors = generator.choice([1e-9, 1e-5, 0.003, 0.2, 0.9], terms) * generator.random(terms)
    numerator = documents + prior_docs
    compiled = fingerprint_module.log_tf_idf(counts, frequency, priors, numerator, prior_docs)
    reference = log_tf_idf_python(counts, frequency, priors, numerator, prior_docs)
    assert compiled.tobytes() == reference.tobytes()


@requires_kernels
@pytest.mark.parametrize(("case", "seed"), [
    ("learned", 1),  # every prior learned, every count positive: the compiled pass
    ("learned", 2),
    ("unlearned prior", 3),  # the general way, from the first term without a prior
    ("count of zero", 4),
    ("weightless terms", 5),  # terms in nearly every document weigh nothing: left out
    ("no terms", 6),
])
def test_an_articles_weights_are_the_same_whether_compiled_or_not(case, seed, monkeypatch):
    generator = np.random.default_rng(seed)
    size = 0 if case == "no terms" else 200
    stats = TermStatistics(prior_docs=2000.0)
    terms = [f"t{number}" for number in range(size)]
    ids = stats.ids_of(terms)
    stats.documents = 50_000
    stats._frequency[ids] = generator.integers(0, 1000, size, dtype=np.int32)
    stats._prior[ids] = generator.choice([1e-7, 1e-4, 0.01, 0.3], size)
    counts = generator.choice([1.0, 2.0, 3.0, 0.3, 7.5], size)
    if case == "unlearned prior":
        stats._prior[ids[[17, 90]]] = TermStatistics.UNKNOWN
    elif case == "count of zero":
        counts[[0, 33]] = 0.0
    elif case == "weightless terms":
        stats._frequency[ids[::7]] = stats.documents * 3
    compiled = term_weights(terms, counts, stats, ids)
    if size:
        general_way = stats.weights_of(ids, counts) is None
        assert general_way == (case in ("unlearned prior", "count of zero"))
    monkeypatch.setattr(fingerprint_module, "kernels", None)
    reference = term_weights(terms, counts, stats, ids)
    assert compiled[0] == reference[0] and compiled[1].tobytes() == reference[1].tobytes()
    assert compiled[2].tolist() == reference[2].tolist()
    if case == "weightless terms":
        assert len(reference[0]) < size


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize(("width", "article_id"), [(np.int32, 7), (np.int64, 7), (np.int32, 0)])
def test_a_document_counted_raises_each_terms_frequency_and_newest_article(
        compiled, width, article_id, monkeypatch):
    if compiled and fingerprint_module.kernels is None:
        pytest.skip("built without a C compiler")
    if not compiled:
        monkeypatch.setattr(fingerprint_module, "kernels", None)
    generator = np.random.default_rng(article_id)
    stats = TermStatistics(prior_docs=10)
    stats.ids_of([f"t{number}" for number in range(2000)])
    frequency = generator.integers(0, 50, len(stats._frequency), dtype=np.int32)
    last = generator.integers(0, 15, len(stats._last_article), dtype=np.int64)
    stats._frequency[:], stats._last_article[:] = frequency, last
    ids = generator.choice(2000, 300, replace=False).astype(width)
    stats.add_document(ids, article_id=article_id)
    expected_frequency, expected_last = frequency.copy(), last.copy()
    expected_frequency[ids] += 1
    expected_last[ids] = np.maximum(last[ids], article_id)
    assert stats._frequency.tobytes() == expected_frequency.tobytes()
    assert stats._last_article.tobytes() == expected_last.tobytes()
    assert stats.documents == 1 and stats.newest_article == article_id
    # Terms seen in no article keep their rows as they were.
    untouched = np.setdiff1d(np.arange(len(last)), ids)
    assert (stats._last_article[untouched] == last[untouched]).all()


@requires_kernels
def test_the_compiled_document_count_refuses_an_id_outside_the_statistics_untouched():
    from aggregator.native import kernels

    frequency, last = np.zeros(10, dtype=np.int32), np.zeros(10, dtype=np.int64)
    for ids in (np.array([3, 10], dtype=np.int32), np.array([3, -1], dtype=np.int64)):
        with pytest.raises(IndexError, match="term 1 is outside the statistics"):
            kernels.count_document(ids, frequency, last, 5)
        assert not frequency.any() and not last.any()
    with pytest.raises(TypeError, match="frequency"):
        kernels.count_document(np.array([1], dtype=np.int32), last, last, 5)
    with pytest.raises(TypeError, match="ids"):
        kernels.count_document(np.array([1.0]), frequency, last, 5)


@requires_kernels
@pytest.mark.parametrize(("values", "limit"), [
    ([], 5),
    ([0.5], 1),
    ([0.5, 0.25], 0),
    ([0.1, 0.4, 0.3, 0.2], 2),
    ([0.1, 0.4, 0.3, 0.2], 4),  # as many as there are: all, sorted
    ([0.1, 0.4, 0.3, 0.2], 9),
    ([0.3, 0.3, 0.3, 0.1, 0.3], 2),  # ties at the cut: the terms decide
    ([0.2] * 40, 7),  # all equal
    ([0.0, -0.0, 0.0, 1.0], 3),  # zeros of both signs are equal
    ("random", 24),
    ("random", 60),
    ("ties", 24),
])
def test_the_compiled_choice_of_strongest_terms_is_pythons(values, limit):
    generator = np.random.default_rng(len(str(values)) + limit)
    if values == "random":
        values = generator.random(300).tolist()
    elif values == "ties":
        values = generator.choice([0.1, 0.2, 0.3], 300).tolist()
    # Names in an order of their own: a tie must be broken by name, not by position.
    terms = [f"t{number}" for number in generator.permutation(len(values))]
    array = np.array(values, dtype=np.float64)
    chosen = strongest_python(terms, array, limit)
    assert fingerprint_module.strongest(terms, array, limit) == chosen
    assert fingerprint_module.strongest(tuple(terms), array, limit) == chosen


@requires_kernels
@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda k: k.strongest(np.array([0.1, np.nan]), ["a", "b"], 1), ValueError,
     "value 1 is NaN"),
    (lambda k: k.strongest(np.array([0.1, 0.2]), ["a", 2], 1), TypeError,
     "term 1 is not a str"),
    (lambda k: k.strongest(np.array([0.1, 0.2]), ["a"], 1), ValueError,
     "2 values but 1 terms"),
    (lambda k: k.strongest(np.array([1, 2]), ["a", "b"], 1), TypeError, "values"),
    (lambda k: k.log_tf_idf(np.array([1.0, 0.0]), np.zeros(2, dtype=np.int32),
                            np.full(2, 0.1), 10.0, 2.0, np.empty(2)), ValueError,
     "term 1: its count"),
    (lambda k: k.log_tf_idf(np.array([1.0]), np.zeros(2, dtype=np.int32), np.full(2, 0.1),
                            10.0, 2.0, np.empty(2)), ValueError, "differ in length"),
    (lambda k: k.log_tf_idf(np.array([1.0]), np.zeros(1, dtype=np.int64), np.full(1, 0.1),
                            10.0, 2.0, np.empty(1)), TypeError, "frequency"),
    (lambda k: k.tf_idf_weights(np.array([0, 5], dtype=np.int32), np.ones(2),
                                np.zeros(5, dtype=np.int32), np.full(5, 0.1), 10.0, 2.0,
                                np.empty(2)), IndexError, "id 5 of term 1 is outside"),
    (lambda k: k.tf_idf_weights(np.array([0], dtype=np.int32), np.ones(2),
                                np.zeros(5, dtype=np.int32), np.full(5, 0.1), 10.0, 2.0,
                                np.empty(2)), ValueError, "differ in length"),
    (lambda k: k.tf_idf_weights(np.array([0], dtype=np.int32), np.ones(1),
                                np.zeros(5, dtype=np.int32), np.full(5, 0.1), -10.0, 2.0,
                                np.empty(1)), ValueError, "term 0: its count or its ratio"),
])
def test_the_compiled_fingerprint_steps_refuse_what_they_cannot_read(call, error, message):
    from aggregator.native import kernels

    with pytest.raises(error, match=message):
        call(kernels)


def table_numbers(vocabulary: Vocabulary, terms: list[str]) -> list[int]:
    """What the compiled table gives for ``terms`` (-1: not there)."""
    numbers, _keys, _absent = vocabulary.table.look_up(" ".join(terms), len(terms))
    return numbers.tolist()


@requires_kernels
@pytest.mark.parametrize("steps", [
    [("name", 10)],
    [("name", 3000)],  # the table grows twice
    [("name", 500), ("forget", 2), ("name", 200)],  # freed numbers go to new terms
    [("name", 2000), ("forget", 1), ("forget", 3), ("restore", 800)],  # restored one by one
    [("restore", 1500), ("name", 100), ("forget", 5), ("restore", 40)],  # restored at once
    [("name", 4000), ("forget", 1)],  # every term leaves: the table empties
])
def test_the_term_table_holds_what_the_vocabulary_holds(steps):
    """Each way a term enters or leaves memory keeps the compiled table equal to the names:
    every term in memory found with its number, every other one missing."""
    vocabulary = Vocabulary()
    left: list[str] = []
    made = 0
    for step, count in steps:
        if step == "name":
            for _ in range(count):
                vocabulary.id(f"term{made}")
                made += 1
        elif step == "forget":  # every count-th term in memory
            numbers = sorted(vocabulary.ids.values())[::count]
            left += [vocabulary.terms[number] for number in numbers]
            vocabulary.forget(numbers)
        else:  # the forgotten first, then new ones, as a start-up or a recall brings them
            terms = left[:count] + [f"term{made + n}" for n in range(max(0, count - len(left)))]
            made += max(0, count - len(left))
            left = left[count:]
            vocabulary.restore_many(list(range(10_000, 10_000 + len(terms))), terms)
    in_memory = list(vocabulary.ids)
    assert vocabulary.table.size == len(in_memory)
    assert table_numbers(vocabulary, in_memory) == [vocabulary.ids[t] for t in in_memory]
    assert table_numbers(vocabulary, left + ["never", "term", "é"]) == [-1] * (len(left) + 3)
    # A copy (of a clusterer's statistics, say) keeps its own table of the same numbers.
    copied = copy.deepcopy(vocabulary)
    copied.id("aftercopy")
    assert table_numbers(copied, in_memory) == [vocabulary.ids[t] for t in in_memory]
    assert table_numbers(vocabulary, ["aftercopy"]) == [-1]


@requires_kernels
def test_terms_looked_up_in_the_table_get_what_they_get_by_name():
    """The same articles' terms through the table (with their string of terms) and by
    name: the same numbers, store ids, new terms numbered in the same order, the same
    recalls from the store, before and after terms leave memory."""
    generator = np.random.default_rng(7)
    stored = {f"w{n}": (n + 1, f"w{n}", int(generator.integers(1, 50)), 0.001, n)
              for n in range(400)}
    by_text, by_name = TermStatistics(prior_docs=10), TermStatistics(prior_docs=10)
    asked = []
    for stats in (by_text, by_name):
        recall, stats_asked = recording_store(stored)
        stats.recall = recall
        asked.append(stats_asked)
        stats.restore_recent(500, 401, [stored[f"w{n}"] for n in range(0, 400, 3)],
                             left_in_store=[f"w{n}" for n in range(400) if n % 3])
    vocabulary_words = [*stored, *(f"new{n}" for n in range(300))]
    for article in range(300):
        terms = list(dict.fromkeys(generator.choice(vocabulary_words, 40).tolist()))
        if article % 7 == 0:
            terms.append(f"only{article}")
        ids = [stats.ids_of(terms, " ".join(terms) if stats is by_text else None)
               for stats in (by_text, by_name)]
        assert ids[0].dtype == ids[1].dtype and ids[0].tolist() == ids[1].tolist()
        for stats, term_ids in zip((by_text, by_name), ids, strict=True):
            stats.add_document(term_ids, article_id=1000 + article)
        if article % 50 == 49:
            for stats in (by_text, by_name):
                stats.forget_unseen_since(1000 + article - 20)
    assert asked[0] == asked[1] and len(asked[0]) > 10
    assert vocabulary_state(by_text.vocabulary) == vocabulary_state(by_name.vocabulary)
    assert by_text.frequencies() == by_name.frequencies()
    in_memory = list(by_text.vocabulary.ids)
    assert table_numbers(by_text.vocabulary, in_memory) == \
        [by_text.vocabulary.ids[t] for t in in_memory]


@requires_kernels
def test_keys_removed_from_the_term_table_leave_the_others_found():
    """Keys that share a home slot probe past one another; taking one out moves the later
    ones back, so that each is still found (and taken out) after."""
    from aggregator.native import kernels

    slots = np.zeros(2 * 16, dtype=np.uint64)
    # Homes 3, 3, 4, 3 and 15, 15 (wrapping round to 0): one run of four, one of two.
    keys = np.array([[3, 1], [19, 2], [4, 3], [35, 4], [15, 5], [31, 6]], dtype=np.uint64)
    kernels.table_insert(slots, keys, np.arange(1, 7, dtype=np.int32))
    assert kernels.table_remove(slots, keys[[0, 4]]) == 2
    assert kernels.table_remove(slots, keys[[0]]) == 0  # gone already
    for key in keys[[1, 2, 3, 5]]:
        assert kernels.table_remove(slots, key[None, :]) == 1
    assert not slots.any()


@requires_kernels
@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda k: k.term_numbers("a b", 1, np.zeros(32, np.uint64), np.empty(3, np.int32),
                              np.empty(6, np.uint64)), ValueError, "2 terms for 3 numbers"),
    (lambda k: k.term_numbers("a b c", 1, np.zeros(32, np.uint64), np.empty(2, np.int32),
                              np.empty(6, np.uint64)), ValueError, "more terms than"),
    (lambda k: k.term_numbers(b"a b", 1, np.zeros(32, np.uint64), np.empty(2, np.int32),
                              np.empty(4, np.uint64)), TypeError, "must be a str"),
    (lambda k: k.term_numbers("a", 1, np.zeros(30, np.uint64), np.empty(1, np.int32),
                              np.empty(2, np.uint64)), ValueError, "power of two"),
    (lambda k: k.term_numbers("a", 1.5, np.zeros(32, np.uint64), np.empty(1, np.int32),
                              np.empty(2, np.uint64)), TypeError, "unsupported operand"),
    (lambda k: k.table_insert(np.zeros(4, np.uint64), np.arange(6, dtype=np.uint64),
                              np.array([1, 2, 3], np.int32)), ValueError, "table is full"),
    (lambda k: k.table_insert(np.zeros(32, np.uint64), np.arange(2, dtype=np.uint64),
                              np.array([0], np.int32)), ValueError, "not above 0"),
    (lambda k: k.term_keys("a b c", 1, np.empty(4, np.uint64)), ValueError,
     "more terms than room for 2 keys"),
    (lambda k: k.table_remove(np.zeros(32, np.uint64), np.arange(3, dtype=np.uint64)),
     ValueError, "two values a key"),
])
def test_the_term_table_refuses_what_it_cannot_hold(call, error, message):
    from aggregator.native import kernels

    with pytest.raises(error, match=message):
        call(kernels)
