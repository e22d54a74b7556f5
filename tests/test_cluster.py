"""The clustering decisions, tested directly, and the clusterer's behaviour on small streams."""

from __future__ import annotations

import json
import math
import os
import shutil
from array import array
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from conftest import SEED_FEEDS, requires_kernels, write_config

from aggregator import cluster as cluster_module
from aggregator import pipeline as pipeline_module
from aggregator import store as store_module
from aggregator.cluster import (
    FIRST_VERSION,
    HELD_BACK_ONE_TERM,
    HELD_BACK_UNSUPPORTED,
    ArticleRows,
    Candidate,
    ClusterArticle,
    Clusterer,
    NearCopy,
    canonical_key,
    canonical_reason,
    capacity_cutoff,
    closest_stories,
    decide,
    equal_values,
    low_bits,
    most_equal_values,
    most_shared,
    salient_bytes,
    salient_values,
    same_story_threshold,
    share_a_band,
    time_factor,
    time_sigma_days,
    window_newest,
    window_start,
)
from aggregator.config import ClusteringSettings, Config, Source, load_config
from aggregator.fingerprint import Signer, fingerprint_batch
from aggregator.native import kernels
from aggregator.parse import ParsedEntry
from aggregator.pipeline import Aggregator, load_clusterer
from aggregator.store import StagedReads, Store

SETTINGS = ClusteringSettings()
DAY = 86400.0


def cand(story_id, score, threshold=0.3):
    return Candidate(story_id, score, score, 1.0, threshold)


@pytest.mark.parametrize(("copies", "candidates", "relation", "story"), [
    ([], [], "new_story", None),
    ([], [cand(1, 0.29)], "new_story", None),
    ([], [cand(1, 0.30)], "same_story", 1),
    ([], [cand(1, 0.4), cand(2, 0.6)], "same_story", 2),
    # The margin over each candidate's own threshold decides, not the raw score.
    ([], [cand(1, 0.35, threshold=0.3), cand(2, 0.30, threshold=0.15)], "same_story", 2),
    ([NearCopy(7, 3, 0.9)], [cand(1, 0.8)], "duplicate", 3),
    ([NearCopy(7, 3, 0.5)], [cand(1, 0.8)], "same_story", 1),
    ([NearCopy(7, 3, 0.75), NearCopy(8, 4, 0.95)], [], "duplicate", 4),
])
def test_decide(copies, candidates, relation, story):
    decision = decide(copies, candidates, SETTINGS)
    assert decision.relation == relation
    assert decision.story_id == story


SLIDING = ClusteringSettings(same_story_threshold=0.3, long_text_threshold=0.15,
                             short_text_words=100, long_text_words=400,
                             time_sigma_days=1.0, long_text_time_sigma_days=5.0)


@pytest.mark.parametrize(("words", "threshold", "sigma"), [
    (20, 0.3, 1.0), (100, 0.3, 1.0), (200, 0.225, 3.0), (400, 0.15, 5.0), (5000, 0.15, 5.0),
])
def test_threshold_and_time_tolerance_slide_with_text_length(words, threshold, sigma):
    assert same_story_threshold(words, SLIDING) == pytest.approx(threshold, abs=1e-3)
    assert time_sigma_days(words, SLIDING) == pytest.approx(sigma, abs=1e-3)


@pytest.mark.parametrize("settings", [
    SLIDING, replace(SLIDING, long_text_words=300, long_text_time_sigma_days=9.0),
    replace(SLIDING, long_text_words=100),  # no sliding: every length is a short text
])
def test_the_clusterers_tables_by_length_give_what_the_functions_give(settings):
    """Scoring reads thresholds and time tolerances from tables by pair length (past the
    last entry, the last one); they follow a change of settings."""
    clusterer = Clusterer(SETTINGS)
    clusterer._length_tables()
    clusterer.settings = settings
    thresholds, sigmas, exact = clusterer._length_tables()
    for words in [1, 50, 99, 100, 101, 150, 250, 299, 300, 301, 399, 400, 401, 402, 5000]:
        at = min(words, len(exact) - 1)
        expected = (same_story_threshold(words, settings), time_sigma_days(words, settings))
        assert exact[at] == expected
        assert (thresholds[at], sigmas[at]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("article", "first", "last", "expected"), [
    (5 * DAY, 4 * DAY, 6 * DAY, 1.0),
    (6 * DAY + 1.5 * DAY, 4 * DAY, 6 * DAY, 0.6065),
    (1 * DAY, 4 * DAY, 6 * DAY, 0.1353),
])
def test_time_factor_counts_from_the_story_span(article, first, last, expected):
    assert time_factor(article, first, last, 1.5) == pytest.approx(expected, abs=1e-3)


class SignaturesByArticle(dict):
    """The store's side of ``StoredFingerprints``: each committed article's shingle
    signature, and the ids asked for, one list a call."""

    def __init__(self):
        super().__init__()
        self.asked: list[list[int]] = []

    def shingle_signatures(self, article_ids: list[int]) -> np.ndarray:
        self.asked.append(list(article_ids))
        return np.stack([self[article_id] for article_id in article_ids])


class Stream:
    """Feeds small articles through a real Clusterer, as the pipeline does; with
    ``stored``, the shingle signatures are read back from it as from the store."""

    def __init__(self, settings=SETTINGS, stored: SignaturesByArticle | None = None):
        self.clusterer = Clusterer(settings, stored=stored)
        self.stored = stored
        self.signer = Signer(settings.num_perm)
        self.next_id = 1
        self.settings = settings

    def add(self, title, text, ts=0.0, priority=0, author=True, source="src", dated=True):
        [fingerprint] = fingerprint_batch([(title, text)], self.clusterer.stats, self.signer,
                                          self.settings.shingle_size, self.settings.title_weight,
                                          self.settings.salient_terms,
                                          self.settings.phrase_weight)
        article = ClusterArticle(None, source, priority, ts, author, fingerprint, dated=dated)
        decision = self.clusterer.propose(article)
        article.article_id = self.next_id
        self.next_id += 1
        story = decision.story_id if decision.story_id is not None else 100 + article.article_id
        outcome = self.clusterer.commit(article, story)
        if self.stored is not None:
            self.stored[article.article_id] = fingerprint.shingle_signature
        return decision, outcome


ALPHA = "glacier avalanche sherpa crampon icefall summit expedition oxygen base ridge"
OMEGA = "vineyard harvest grape fermentation cellar barrel sommelier vintage tannin cork"


def test_no_chaining_through_a_member_that_resembles_both():
    stream = Stream()
    a_words, c_words = ALPHA.split(), OMEGA.split()
    first, _ = stream.add("Climbers", " ".join(a_words * 2))
    bridge, _ = stream.add("Climbers", " ".join(a_words[:6] + c_words[:6]) * 2)
    third, _ = stream.add("Harvest", " ".join(c_words * 2))
    assert first.relation == "new_story"
    assert bridge.relation == "same_story"  # B resembles A
    assert third.relation == "new_story"    # C resembles B only: it must not join through B
    [candidate] = third.candidates  # its mean cosine with A and B is above the threshold
    assert candidate.cosine >= SETTINGS.same_story_threshold and candidate.score == 0.0
    assert candidate.held_back == HELD_BACK_UNSUPPORTED


def pseudo_words(prefix: str, count: int) -> list[str]:
    """``count`` distinct invented words (no English prior, no shared stems)."""
    syllables = ("ka", "lo", "mi", "ren", "tor", "va", "shi", "ban", "dre", "zel")
    return [prefix + "".join(syllables[number // 10 ** digit % 10] for digit in range(3))
            for number in range(count)]


NAME = "velnikor"


def long_text(prefix: str, shared: list[str]) -> str:
    """A long text (over ``long_text_words``) of its own words, naming NAME a dozen times."""
    return " ".join(pseudo_words(prefix, 420) + [NAME] * 12 + shared)


@pytest.mark.parametrize(("evidence", "name_alone_joins"), [(0.0, True), (0.2, False)])
def test_one_shared_name_does_not_make_long_texts_one_story(evidence, name_alone_joins):
    # Two long texts whose only common term is a name they both repeat: its weight alone
    # takes the cosine (0.17) over the long-text threshold (0.08). Two that share a topic
    # too join whatever the setting.
    stream = Stream(replace(SETTINGS, evidence_beyond_one_term=evidence, salient_terms=3))
    stream.add(NAME, long_text("qu", []), ts=0)
    other, _ = stream.add(NAME, long_text("gu", []), ts=60)
    [candidate] = other.candidates
    assert candidate.threshold == SETTINGS.long_text_threshold
    assert candidate.cosine >= candidate.threshold
    assert (other.relation == "same_story") is name_alone_joins
    assert candidate.held_back == (None if name_alone_joins else HELD_BACK_ONE_TERM)
    topic = pseudo_words("pa", 30) * 2
    stream.add(NAME, long_text("fu", topic), ts=120)  # article 3: story 103 if alone
    again, _ = stream.add(NAME, long_text("hu", topic), ts=180)
    assert again.relation == "same_story"
    assert again.story_id == (101 if name_alone_joins else 103)


@pytest.mark.parametrize(("evidence", "beyond_one_term", "factor", "threshold", "broad"), [
    (0.0, [0.0, 0.0], 1.0, 0.08, True),      # the rule off
    (0.2, [0.02, 0.0], 1.0, 0.08, False),    # mean 0.01 < 0.016
    (0.2, [0.02, 0.02], 1.0, 0.08, True),    # mean 0.02 >= 0.016
    (0.2, [0.02, 0.02], 0.5, 0.08, False),   # the time factor counts: 0.01
    (0.2, [0.04], 1.0, 0.18, True),          # short texts: 0.04 >= 0.036
    (1.0, [0.17], 1.0, 0.18, False),
])
def test_a_story_is_joined_on_more_than_one_term(evidence, beyond_one_term, factor,
                                                 threshold, broad):
    clusterer = Clusterer(replace(SETTINGS, evidence_beyond_one_term=evidence))
    assert clusterer._broad(beyond_one_term, factor, threshold) is broad


def test_near_copy_is_a_duplicate_and_unrelated_text_is_a_new_story():
    stream = Stream()
    body = ("The city council approved a new budget on Tuesday that raises spending on public "
            "transport by twelve percent and freezes parking fees for two years, after a long "
            "debate in which opposition members argued the plan relied on optimistic forecasts "
            "of tax revenue from the new harbour district.")
    stream.add("Council approves transport budget", body)
    copy, outcome = stream.add("Council approves transport budget",
                               body.replace("Tuesday", "Tuesday evening"))
    assert copy.relation == "duplicate"
    assert outcome.member_relations[2][0] == "duplicate"
    other, _ = stream.add("Volcano erupts", "Lava flowed from the volcano as villagers fled "
                          "the ash cloud towards the coast and the airport closed.")
    assert other.relation == "new_story"


@pytest.mark.parametrize("num_perm", [16, 100, 128, 256])
def test_the_low_bits_bound_the_equal_values(num_perm):
    """Two signatures agree in at most as many values as their low bits allow: a bound
    that never excludes a near-copy, is exact for equal signatures, and for unrelated ones
    stays near half the values."""
    rng = np.random.default_rng(num_perm)
    canonical = rng.integers(0, 2**32, num_perm, dtype=np.uint32)
    rows = np.tile(canonical, (num_perm + 1, 1))
    for shared in range(num_perm + 1):  # row ``shared`` agrees in ``shared`` values
        differing = rng.permutation(num_perm)[:num_perm - shared]
        rows[shared, differing] ^= rng.integers(1, 2**32, len(differing), dtype=np.uint32)
    assert low_bits(rows).shape == (num_perm + 1, (num_perm + 7) // 8)
    assert low_bits(rows).tolist() == np.packbits(rows & 1, axis=-1,
                                                  bitorder="little").tolist()
    assert low_bits(rows.astype(">u4")).tolist() == low_bits(rows).tolist()
    assert low_bits(rows[:, ::-1][:, ::-1]).tolist() == low_bits(rows).tolist()
    assert low_bits(canonical).tolist() == low_bits(rows[-1]).tolist()
    bound = most_equal_values(low_bits(rows), low_bits(canonical), num_perm)
    equal = equal_values(rows, canonical)
    assert equal.tolist() == list(range(num_perm + 1))
    assert (bound >= equal).all()
    assert bound[-1] == num_perm
    unrelated = rng.integers(0, 2**32, (200, num_perm), dtype=np.uint32)
    spread = most_equal_values(low_bits(unrelated), low_bits(canonical), num_perm)
    assert abs(spread.mean() - num_perm / 2) < 0.1 * num_perm


def test_relations_read_the_signatures_only_of_possible_duplicates():
    """With the signatures in the store, each relation to the canonical comes out as with
    them in memory; a different write-up, whose low bits rule out a duplicate, reads no
    signature, a near-copy reads its own and the canonical's."""
    body = ("The city council approved a new budget on Tuesday that raises spending on public "
            "transport by twelve percent and freezes parking fees for two years, after a long "
            "debate in which opposition members argued the plan relied on optimistic forecasts "
            "of tax revenue from the new harbour district.")
    rewrite = ("Councillors voted through the budget on Tuesday: transport spending rises "
               "twelve percent, parking fees are frozen for two years, and the opposition "
               "called the harbour district revenue forecasts optimistic.")
    articles = [  # (title, text, priority): the third is better and becomes the canonical
        ("Council approves transport budget", body, 0),
        ("Council passes budget", rewrite, 0),
        ("Council approves transport budget", body.replace("Tuesday", "Tuesday evening"), 5),
        ("Budget passes council", rewrite + " The vote was close.", 0),
        ("Council approves transport budget", body.replace("Tuesday", "Tuesday night"), 0),
    ]
    stored = SignaturesByArticle()
    in_memory, reading = Stream(), Stream(stored=stored)
    asked, outcomes = [], []
    for title, text, priority in articles:
        before = len(stored.asked)
        expected = in_memory.add(title, text, priority=priority)
        assert reading.add(title, text, priority=priority) == expected
        asked.append(stored.asked[before:])
        outcomes.append(expected[1])
    assert [outcome.canonical_id for outcome in outcomes] == [1, 1, 3, 3, 3]
    assert outcomes[2].member_relations[1][0] == "duplicate"
    assert outcomes[2].member_relations[2][0] == "same_story"
    assert outcomes[3].member_relations[4][0] == "same_story"
    assert outcomes[4].member_relations[5][0] == "duplicate"
    assert asked[0] == []  # a story of one
    assert asked[1] == []  # a different write-up: its low bits rule out a duplicate
    # The near-copy that becomes the canonical reads the article it copies, for the
    # near-copy search and for its relation; never the rewrite.
    assert asked[2] == [[1], [1]]
    assert asked[3] == []
    # A near-copy of the canonical, which stays: the canonical is read for its relation.
    assert asked[4][-1] == [3]


@pytest.mark.parametrize(("row", "bands", "rows", "shares"), [
    ([1, 2, 3, 4, 5, 6], 3, 2, True),    # equal throughout
    ([1, 2, 9, 9, 9, 9], 3, 2, True),    # the first band whole
    ([1, 9, 3, 9, 5, 9], 3, 2, False),   # half of every band
    ([9, 9, 9, 9, 5, 6], 3, 2, True),    # the last band
    ([9, 9, 9, 9, 5, 6], 2, 2, False),   # ... which is not a band when there are two
    ([9, 2, 9, 9, 9, 9], 6, 1, True),    # one value is a band of one row
])
def test_share_a_band(row, bands, rows, shares):
    signature = np.array([1, 2, 3, 4, 5, 6, 7], dtype=np.uint32)
    assert share_a_band(np.array([row + [0]], dtype=np.uint32), signature, bands,
                        rows).tolist() == [shares]


def test_a_band_key_shared_by_chance_finds_nothing():
    """Band keys are 32 bits, so an unrelated article can now and then share a key with a
    stored one: the stored article is checked to hold the band's values before it counts
    as found, so it is neither a near-copy nor a candidate."""
    clusterer = Clusterer(SETTINGS)
    signer = Signer(SETTINGS.num_perm)

    def article(title: str, text: str) -> ClusterArticle:
        [fingerprint] = fingerprint_batch([(title, text)], clusterer.stats, signer,
                                          SETTINGS.shingle_size, SETTINGS.title_weight,
                                          SETTINGS.salient_terms, SETTINGS.phrase_weight)
        return ClusterArticle(None, "src", 0, 0.0, True, fingerprint)

    stored = article("Climbers", " ".join(ALPHA.split() * 2))
    assert clusterer.propose(stored).relation == "new_story"
    stored.article_id = 1
    clusterer.commit(stored, 101)
    unrelated = article("Harvest", " ".join(OMEGA.split() * 2))
    # Every band of both indexes collides with the stored article's.
    unrelated.shingle_keys = clusterer.duplicate_index.band_keys(
        stored.fingerprint.shingle_signature[None, :])
    unrelated.salient_keys = clusterer.candidate_index.band_keys(
        stored.fingerprint.salient_signature[None, :])
    assert clusterer.candidate_index.query(None, unrelated.salient_keys[0]).size
    decision = clusterer.propose(unrelated)
    assert decision.near_copies == () and decision.candidates == ()
    assert decision.relation == "new_story"
    # The same keys with the stored article's own values are found, as they should be.
    again = article("Climbers", " ".join(ALPHA.split() * 2))
    again.shingle_keys, again.salient_keys = unrelated.shingle_keys, unrelated.salient_keys
    decision = clusterer.propose(again)
    assert decision.relation == "duplicate" and decision.candidates[0].story_id == 101


def test_canonical_is_re_elected_when_a_better_version_arrives():
    stream = Stream()
    words = ALPHA.split()
    stream.add("Expedition reaches summit", " ".join(words), ts=0, priority=0)
    _decision, outcome = stream.add("Expedition reaches summit", " ".join(words * 3), ts=60,
                                    priority=5)
    assert outcome.canonical_id == 2
    assert outcome.previous_canonical_id == 1
    assert "priority" in outcome.canonical_reason
    assert outcome.member_relations[1][0] in ("duplicate", "same_story")
    assert outcome.member_relations[2] == ("canonical", 1.0)


@pytest.mark.parametrize(("seed", "policies"), [
    (1, [("priority", "completeness", "earliest", "has_author")]),
    (2, [("earliest",), ("completeness", "has_author", "earliest")]),
    (3, [("has_author", "priority"), ("has_author", "priority"), ("priority",)]),
    (4, [()]),
])
def test_the_canonical_is_always_the_best_member_under_the_policy_in_force(seed, policies):
    """Elected after each join from the canonical and the newcomer alone while the policy
    holds: the same as ranking every member, as after a policy change or a restore."""
    rng = np.random.default_rng(seed)
    clusterer = Clusterer(SETTINGS)
    [base] = fingerprint_batch([("t", "a b c d e")], clusterer.stats, Signer(128), 3, 3.0, 24)
    members: list[ClusterArticle] = []
    for number in range(1, 61):
        stage = (number - 1) * len(policies) // 60
        policy = policies[stage]
        clusterer.settings = replace(SETTINGS, canonical_policy=policy)
        if number == 45:
            # As after a restart: the stored canonical was elected under other priorities.
            story = clusterer.stories[1]
            story.canonical_slot, story.canonical_id = story.slots[-1], members[-1].article_id
            story.elected_under = None
        article = ClusterArticle(number, f"s{number % 3}", int(rng.integers(0, 3)),
                                 float(rng.choice([0.0, 60.0, 120.0])), bool(rng.random() < 0.5),
                                 replace(base, word_count=int(rng.choice([40, 45, 200, 900]))))
        members.append(article)
        outcome = clusterer.commit(article, 1)
        ranked = sorted(members, key=lambda a, p=policy: canonical_key(a, p))
        assert outcome.canonical_id == ranked[0].article_id
        if number == 1:
            assert outcome.canonical_reason == FIRST_VERSION
        elif outcome.canonical_reason is not None:
            assert outcome.canonical_reason == canonical_reason(ranked[0], ranked[1], policy)


def test_canonical_policy_order_is_configurable():
    stream = Stream()
    [short, long_] = fingerprint_batch([("t", "a b c"), ("t", "a b c " * 50)],
                                       stream.clusterer.stats, stream.signer, 3, 3.0, 24)
    early_short = ClusterArticle(1, "s", 0, 0.0, False, short)
    late_long = ClusterArticle(2, "s", 0, 100.0, True, long_)
    by_completeness = ("completeness", "earliest")
    by_time = ("earliest", "completeness")
    assert min([early_short, late_long], key=lambda a: canonical_key(a, by_completeness)) \
        is late_long
    assert min([early_short, late_long], key=lambda a: canonical_key(a, by_time)) \
        is early_short


def test_stale_stories_attract_nothing():
    settings = ClusteringSettings(window_days=2)
    stream = Stream(settings)
    words = ALPHA.split()
    stream.add("Expedition reaches summit", " ".join(words), ts=0)
    late, _ = stream.add("Expedition reaches summit", " ".join(words), ts=3 * DAY)
    assert late.relation == "new_story"
    assert stream.clusterer.evict_before(1 * DAY) == 1
    assert 1 not in stream.clusterer.window_article_ids()
    assert stream.clusterer.window_size == 1


@pytest.mark.parametrize(("span_days", "joined_days"),
                         [(14, [0, 2, 4, 6, 8, 10, 12, 14]), (5, [0, 2, 4]), (1000, None)])
def test_a_story_stops_attracting_articles_once_it_spans_story_span_days(span_days,
                                                                        joined_days):
    # One follow-up every two days for four weeks: each is within the window of the last.
    stream = Stream(ClusteringSettings(story_span_days=span_days))
    words = ALPHA.split()
    joined = []
    for day in range(0, 30, 2):
        decision, outcome = stream.add("Expedition reaches summit", " ".join(words),
                                       ts=day * DAY)
        if outcome.story_id == 101:
            joined.append(day)
        stream.clusterer.evict_before((day - SETTINGS.window_days) * DAY)
    assert joined == (joined_days or list(range(0, 30, 2)))
    # Bounded: what is held is the last story's members, not four weeks of them.
    held = stream.clusterer.window_size
    assert held == len(stream.clusterer.window_article_ids())
    assert held == 15 if joined_days is None else held <= (30 - joined_days[-1]) // 2


def test_the_story_columns_agree_with_the_members_through_joins_and_evictions():
    """What scoring gathers from ``StoryColumns`` is what the members' rows say, and the row
    of an evicted story goes to a new one."""
    rng = np.random.default_rng(5)
    clusterer = Clusterer(ClusteringSettings(window_days=2, story_span_days=2))
    signer = Signer(SETTINGS.num_perm)
    topics = [ALPHA.split(), OMEGA.split(), "parliament ballot coalition minister vote".split()]
    most_rows = 0
    for number in range(1, 121):
        words = list(rng.choice(topics[int(rng.integers(0, 3))], size=8))
        [fingerprint] = fingerprint_batch([("t", " ".join(words))], clusterer.stats, signer,
                                          3, 3.0, 24)
        ts = number * 3600.0 + float(rng.integers(-7200, 7200))
        article = ClusterArticle(None, f"s{number % 4}", 0, ts, True, fingerprint,
                                 dated=bool(rng.random() < 0.7))
        story_id = clusterer.propose(article).story_id or 1000 + number
        article.article_id = number
        clusterer.commit(article, story_id)
        most_rows = max(most_rows, len(clusterer.stories))
        if number % 10 == 0:
            clusterer.evict_before(ts - 1.5 * DAY)
        columns, rows = clusterer.story_columns, clusterer.rows
        for story in clusterer.stories.values():
            slots = np.array(story.slots, dtype=np.int64)
            times = rows.published_ts[slots]
            dated = times[rows.dated[slots]]
            assert columns.size[story.row] == len(slots)
            assert (story.first_ts, story.last_ts) == (times.min(), times.max())
            assert (story.dated_first_ts, story.dated_last_ts) == (
                (dated.min(), dated.max()) if dated.size else (math.inf, -math.inf))
            assert rows.article_id[story.canonical_slot] == story.canonical_id
            assert (rows.story_row[slots] == story.row).all()
        live_rows = [story.row for story in clusterer.stories.values()]
        assert len(set(live_rows)) == len(live_rows)
        # Eviction finds the live stories and the newest time in the columns alone.
        assert columns.live_rows().tolist() == sorted(live_rows)
        assert clusterer.newest_ts() == max(story.last_ts
                                            for story in clusterer.stories.values())
        for ts_now in (ts, ts + 2.5 * DAY):
            expected = [ts_now - story.last_ts <= 2 * DAY and ts_now - story.first_ts <= 2 * DAY
                        for story in clusterer.stories.values()]
            assert clusterer._live(np.asarray(live_rows), ts_now).tolist() == expected
    assert clusterer.story_columns.used == most_rows < 120
    assert Clusterer(ClusteringSettings()).newest_ts() == -math.inf


@pytest.mark.parametrize(("last_ts", "sizes", "limit", "by_time", "expected"), [
    pytest.param([10, 20, 30], [2, 2, 2], 0, 5, 5, id="no-limit"),
    pytest.param([10, 20, 30], [2, 2, 2], 6, 5, 5, id="fits-exactly"),
    pytest.param([10, 20, 30], [2, 2, 2], 5, 5, 11, id="oldest-story-leaves"),
    pytest.param([10, 20, 30], [2, 2, 2], 3, 5, 21, id="two-leave"),
    pytest.param([30, 10, 20], [2, 2, 2], 3, 5, 21, id="any-order"),
    # The stories that the time cutoff drops anyway do not count.
    pytest.param([10, 20, 30], [50, 2, 2], 4, 15, 15, id="stale-not-counted"),
    # Whole seconds: the store keeps times to the second.
    pytest.param([10.25, 20.5, 30.75], [2, 2, 2], 4, 0, 11, id="next-whole-second"),
    # Stories in the same second go together, even if the later one would fit.
    pytest.param([10.2, 10.7, 30], [2, 1, 2], 3, 0, 11, id="same-second"),
    pytest.param([10, 20, 30], [2, 2, 9], 5, 0, 31, id="newest-too-big-for-the-limit"),
    pytest.param([], [], 5, 7, 7, id="empty-window"),
])
def test_capacity_cutoff(last_ts, sizes, limit, by_time, expected):
    cutoff = capacity_cutoff(np.array(last_ts, dtype=np.float64), np.array(sizes, dtype=np.int64),
                             limit, by_time)
    assert cutoff == expected
    kept = sum(size for ts, size in zip(last_ts, sizes, strict=True) if ts >= cutoff)
    assert kept <= limit or limit == 0


def desk_config(tmp_path, name: str, window_articles: int) -> Config:
    """One source, a 30-day window of at most ``window_articles`` articles: the small
    streams below."""
    return Config(
        path=str(tmp_path / "c.toml"), database=str(tmp_path / f"{name}.db"),
        sources=(Source(name="desk", url=str(tmp_path / "f.xml"), interval_s=3600),),
        clustering=ClusteringSettings(window_days=30, window_articles=window_articles))


def add_report(aggregator: Aggregator, number: int, published: datetime, topic: str,
               lead: str = "Report"):
    """A short article on ``topic`` (its words three times), published and fetched at
    ``published``; its decision."""
    entry = ParsedEntry(guid=f"g{number}", link=None, title=f"{lead} {topic}",
                        published=published,
                        content=f"<p>{lead}: {topic} {topic}. {topic}.</p>")
    return aggregator.ingest_entries("desk", 0, [entry], published).decisions[0][1]


def test_the_window_keeps_to_its_article_limit_across_a_restart(tmp_path, monkeypatch):
    # Ten stories a day apart, a limit of four articles, eviction after every article:
    # the window keeps the newest four stories, a restart rebuilds the same four, and an
    # article that arrives late and retells an evicted story starts a new one, which leaves
    # the window too, live and after a restart; without the limit it joins.
    monkeypatch.setattr(pipeline_module, "EVICT_EVERY", 1)
    words = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
    topics = [" ".join(words[n * 6:n * 6 + 6]) for n in range(10)]  # no word in common
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def aggregator_for(name, limit):
        return Aggregator(desk_config(tmp_path, name, limit))

    def add(aggregator, number, day, topic, lead="Report"):
        return add_report(aggregator, number, start + timedelta(days=day), topic, lead)

    outcomes = {}
    for limit in (4, 0):
        aggregator = aggregator_for(f"limit{limit}", limit)
        for number, topic in enumerate(topics):
            add(aggregator, number, number, topic)
        live = aggregator.clusterer.window_article_ids()
        floor = aggregator.store.window_floor()
        aggregator.close()
        # Reopened with room for more: what left the window stays out of it.
        aggregator = aggregator_for(f"limit{limit}", limit and limit + 2)
        assert aggregator.clusterer.window_article_ids() == live
        relation = add(aggregator, 10, 1.5, topics[1], "Update").relation
        after = aggregator.clusterer.window_article_ids()
        aggregator.close()
        aggregator = aggregator_for(f"limit{limit}", limit and limit + 2)
        assert aggregator.clusterer.window_article_ids() == after
        aggregator.close()
        outcomes[limit] = (live, floor, relation)
    assert outcomes[4] == ({7, 8, 9, 10}, start + timedelta(days=5, seconds=1), "new_story")
    assert outcomes[0][:2] == (set(range(1, 11)), None)
    assert outcomes[0][2] in ("same_story", "duplicate")


@pytest.mark.parametrize("restart", [False, True])
def test_an_article_stamped_by_a_clock_a_year_ahead_does_not_move_the_window_a_year_ahead(
        tmp_path, monkeypatch, restart):
    """An entry fetched while the system clock was a year ahead is dated by that clock. Once
    the clock is right again, the window still runs back from the present: a report and
    its update a day later make one story, live (eviction after every article) and across
    a restart.  Run back from the article stamped ahead, the window left every story of the
    present, the report before its update came."""
    monkeypatch.setattr(pipeline_module, "EVICT_EVERY", 1)
    words = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
    topics = [" ".join(words[n * 6:n * 6 + 6]) for n in range(2)]
    now = datetime.now(UTC).replace(microsecond=0)
    config = desk_config(tmp_path, "ahead", 0)
    aggregator = Aggregator(config)
    add_report(aggregator, 0, now + timedelta(days=365), topics[0])
    add_report(aggregator, 1, now - timedelta(days=1), topics[1])
    if restart:
        aggregator.close()
        aggregator = Aggregator(config)
    update = add_report(aggregator, 2, now, topics[1], "Update")
    assert update.relation in ("same_story", "duplicate")
    assert len({story for (story,) in aggregator.store.db.execute(
        "SELECT story_id FROM articles WHERE guid IN ('g1', 'g2')")}) == 1
    assert aggregator.clusterer.window_article_ids() == {1, 2, 3}
    aggregator.close()


@pytest.mark.parametrize(("newest_days", "expected_days"), [
    (-30, -30),         # a store filled from dated archives: its own newest article
    (0, 0),
    (1, 1),             # an entry's date may be a day ahead of its fetch
    (365, 1),           # stamped by a clock a year ahead, since set right
])
def test_the_window_runs_back_from_its_newest_article_but_not_from_a_time_to_come(
        newest_days, expected_days):
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert window_newest((now + timedelta(days=newest_days)).timestamp(), now) == \
        (now + timedelta(days=expected_days)).timestamp()
    assert window_start(now + timedelta(days=newest_days), None, 7, now) == \
        now + timedelta(days=expected_days - 7)


def test_terms_that_leave_memory_come_back_as_they_were(tmp_path, monkeypatch):
    # Each story has words of its own and the window holds four articles, so the terms of
    # older stories leave memory; late articles retell two of them.  Every row stored is
    # what a writer that kept every term in memory stores, with or without a restart.
    monkeypatch.setattr(pipeline_module, "EVICT_EVERY", 1)
    words = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
    topics = [" ".join(words[n * 6:n * 6 + 6]) for n in range(10)]
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def run(name, forget_min, restart_after=None):
        monkeypatch.setattr(pipeline_module, "FORGET_TERMS_MIN", forget_min)
        config = desk_config(tmp_path, name, 4)
        aggregator = Aggregator(config)
        late = [(10, 9.5, topics[1], "Update"), (11, 9.6, topics[8], "Update"),
                (12, 9.7, topics[2], "Update")]
        for number, day, topic, lead in [(n, n, t, "Report") for n, t in enumerate(topics)] + late:
            add_report(aggregator, number, start + timedelta(days=day), topic, lead)
            if number == restart_after:
                aggregator.close()
                aggregator = Aggregator(config)
        in_memory = len(aggregator.clusterer.vocabulary.ids)
        db = aggregator.store.db
        rows = {table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("term_stats", "article_fingerprints", "stories")}
        rows["articles"] = db.execute("SELECT id, story_id, relation, similarity, decision "
                                      "FROM articles ORDER BY id").fetchall()
        aggregator.close()
        return rows, in_memory

    recalled: list[str] = []
    recall_terms = StagedReads.recall_terms

    def recording(reads, terms):
        found = recall_terms(reads, terms)
        recalled.extend(row[1] for row in found)
        return found

    monkeypatch.setattr(StagedReads, "recall_terms", recording)
    every_term, kept = run("every-term", 10**9)
    assert kept == len(every_term["term_stats"]) == 62  # 60 topic words, "report", "updat"
    assert recalled == []
    for name, restart_after in (("forgetting", None), ("restarted", 6)):
        rows, in_memory = run(name, 0, restart_after)
        assert rows == every_term, name
        assert in_memory < kept, name
        # The late articles' words came back from the store.
        assert set(topics[1].split()) <= set(recalled), name
        recalled.clear()


def test_a_term_that_a_window_vector_holds_keeps_its_number(tmp_path, monkeypatch):
    # Story A's first article has two words that no later article uses until the last one;
    # a follow-up keeps the story, so that first article stays in the window while the
    # latest articles (as many as the window holds) do not use those words.  Unused by the
    # latest articles, they could leave memory, and a new term take their number; the first
    # article's vector holds that number, so it must not.  Every row must be what a writer
    # that never forgets stores.
    monkeypatch.setattr(pipeline_module, "EVICT_EVERY", 1)
    forget = Aggregator._forget_unseen_terms

    def after_every_transaction(aggregator):
        aggregator._terms_kept = -10**9
        forget(aggregator)

    words = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
    story_a, rest = words[:6], words[6:]
    start = datetime(2026, 3, 1, tzinfo=UTC)
    articles = [(0, " ".join(story_a))]
    articles += [(hour, " ".join(rest[hour * 6:hour * 6 + 6])) for hour in (1, 2, 3)]
    articles += [(4, " ".join(story_a[:4])),          # A goes on, without the last two words
                 (4.5, " ".join(rest[24:30])),        # new terms, which take free numbers
                 (4.6, " ".join(story_a[:2] + story_a[4:] + rest[30:32]))]  # A again

    def run(name, forgetting, restart_after=None):
        if forgetting:
            monkeypatch.setattr(Aggregator, "_forget_unseen_terms", after_every_transaction)
        else:
            monkeypatch.setattr(pipeline_module, "FORGET_TERMS_MIN", 10**9)
        config = desk_config(tmp_path, name, 4)
        aggregator = Aggregator(config)
        for number, (hour, topic) in enumerate(articles):
            add_report(aggregator, number, start + timedelta(hours=hour), topic)
            if number == restart_after:
                aggregator.close()
                aggregator = Aggregator(config)
        vocabulary = aggregator.clusterer.vocabulary
        rows = aggregator.store.db.execute(
            "SELECT id, story_id, relation, similarity, decision FROM articles "
            "ORDER BY id").fetchall()
        numbers = len(vocabulary), vocabulary.seen
        aggregator.close()
        monkeypatch.undo()
        monkeypatch.setattr(pipeline_module, "EVICT_EVERY", 1)
        return rows, numbers

    never, _ = run("never", forgetting=False)
    assert [row[1] for row in never] == [1, 2, 3, 4, 1, 5, 1]  # A keeps its articles
    for name, restart_after in (("forgetting", None), ("restarted", 4)):
        rows, (numbers, seen) = run(name, forgetting=True, restart_after=restart_after)
        assert rows == never, name
        assert numbers <= seen, name  # numbers were given back and taken again


def test_decisions_do_not_depend_on_when_the_indexes_are_compacted(tmp_path, monkeypatch):
    # Every title begins with the same two words, so that more articles share bands with
    # each one than the candidate limit (two here) lets through, with ties at the cut;
    # evicted articles' slots are handed to later ones only after a compaction, so slot
    # order and article order part ways at a moment compaction picks.  Which candidates are
    # scored, so every decision and what it records, must not depend on that moment.
    monkeypatch.setattr(pipeline_module, "EVICT_EVERY", 1)
    monkeypatch.setattr(cluster_module, "CANDIDATE_SLOTS", 2)
    words = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def run(name, compact_at):
        monkeypatch.setattr(cluster_module, "COMPACT_AT_DEAD_MIN", compact_at)
        aggregator = Aggregator(desk_config(tmp_path, name, 5))
        for number in range(20):
            own = " ".join(words[number * 3:number * 3 + 3])
            entry = ParsedEntry(guid=f"g{number}", link=None, title=f"Minister summit {own}",
                                published=start + timedelta(hours=number),
                                content=f"<p>Minister summit: {own}. {own}. {own}.</p>")
            aggregator.ingest_entries("desk", 0, [entry], start + timedelta(hours=number))
        slots = aggregator.clusterer.rows.used
        rows = aggregator.store.db.execute(
            "SELECT id, story_id, relation, similarity, decision FROM articles "
            "ORDER BY id").fetchall()
        aggregator.close()
        return rows, slots

    never, slots_never = run("never-compacted", 10**9)
    always, slots_always = run("compacted-at-each-eviction", 0)
    assert slots_always < slots_never  # slots were reused in one run and not in the other
    assert always == never


def test_a_restart_gives_back_the_times_the_clusterer_used(tmp_path):
    # A JSON feed can date entries to the microsecond; the store keeps whole seconds.  The
    # times the clusterer scores with must be those it has again after a restart, or the
    # time factors of every later decision change.
    config = Config(path=str(tmp_path / "c.toml"), database=str(tmp_path / "t.db"),
                    sources=(Source(name="desk", url=str(tmp_path / "f.xml"),
                                    interval_s=3600),))
    start = datetime(2026, 3, 1, 8, 0, 0, 437_512, tzinfo=UTC)
    aggregator = Aggregator(config)
    for number, (hours, topic) in enumerate([(0, "harbour strike ends after dockers vote"),
                                             (5.3, "dockers vote ends harbour strike"),
                                             (9.7, "glacier survey begins in the north")]):
        published = start + timedelta(hours=hours, microseconds=number * 123_457)
        entry = ParsedEntry(guid=f"g{number}", link=None, title=topic.title(),
                            published=published, content=f"<p>{topic}, said officials.</p>")
        aggregator.ingest_entries("desk", 0, [entry], published + timedelta(minutes=1))

    def story_times(clusterer):
        columns = clusterer.story_columns
        return {story_id: tuple(float(getattr(columns, name)[story.row]) for name in
                                ("first_ts", "last_ts", "dated_first_ts", "dated_last_ts"))
                for story_id, story in clusterer.stories.items()}

    def article_times(clusterer):
        rows = clusterer.rows
        return sorted(zip(rows.article_id[rows.alive].tolist(),
                          rows.published_ts[rows.alive].tolist(), strict=True))

    live = story_times(aggregator.clusterer), article_times(aggregator.clusterer)
    aggregator.close()
    aggregator = Aggregator(config)
    assert (story_times(aggregator.clusterer), article_times(aggregator.clusterer)) == live
    assert all(ts == int(ts) for _id, ts in live[1])
    assert sorted(len(story.slots) for story in aggregator.clusterer.stories.values()) == [1, 2]
    aggregator.close()


def first_decision(aggregator, source: str) -> dict:
    """The stored decision (what ``aggregator explain`` reads) of a source's first article."""
    [row] = aggregator.store.db.execute(
        "SELECT a.decision FROM articles a JOIN sources s ON s.id = a.source_id "
        "WHERE s.name = ? ORDER BY a.id LIMIT 1", [source])
    return json.loads(row[0])


def test_restart_restores_statistics_and_index(tmp_path, seed_dir):
    names = list(SEED_FEEDS)

    def config_for(name, sources):
        return load_config(write_config(tmp_path / f"{name}.toml", [
            {"name": n, "url": str(seed_dir / SEED_FEEDS[n])} for n in sources],
            database=f"{name}.db"), environ={})

    # Uninterrupted: all three seeds in one process.
    straight = Aggregator(config_for("straight", names))
    straight.run_pass()
    expected = first_decision(straight, names[2])
    straight_stats = (straight.clusterer.stats.documents,
                      straight.clusterer.stats.frequencies())
    straight.close()

    # Interrupted: two seeds, a restart, then the third.
    shutil.copy(seed_dir / SEED_FEEDS[names[2]], tmp_path / "held.json")
    first = Aggregator(config_for("restart", names[:2]))
    first.run_pass()
    first.close()
    second = Aggregator(config_for("restart", names))
    assert second.clusterer.window_size == 2
    [report] = second.run_pass()
    assert report.decisions is None  # a pass's reports do not hold them; the store does
    got = first_decision(second, names[2])
    assert got["relation"] == expected["relation"] == "same_story"
    assert got["candidates"][0]["score"] == pytest.approx(expected["candidates"][0]["score"],
                                                          abs=1e-4)
    assert (second.clusterer.stats.documents,
            second.clusterer.stats.frequencies()) == straight_stats
    second.close()


def test_the_window_comes_back_the_same_whatever_the_chunks_it_is_read_in(
        seed_config, monkeypatch):
    config = load_config(seed_config, environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    aggregator.close()

    def restored():
        store = Store(config.database)
        clusterer = load_clusterer(store, config.clustering, Signer(config.clustering.num_perm))
        rows = clusterer.rows
        signatures = rows.salient[:rows.used]
        for story in clusterer.stories.values():  # each story knows its canonical's row
            assert rows.article_id[story.canonical_slot] == story.canonical_id
        state = {
            "articles": sorted(clusterer.window_article_ids()),
            "stories": {story_id: (clusterer.members(story_id), story.canonical_id,
                                   story.canonical_slot, story.first_ts, story.last_ts)
                        for story_id, story in clusterer.stories.items()},
            "rows": [getattr(rows, name)[:rows.used].tolist() for name in rows.ARRAYS],
            "candidates": [sorted(clusterer.candidate_index.query(s).tolist())
                           for s in signatures],
            "documents": clusterer.stats.documents,
        }
        store.close()
        return state

    whole = restored()
    assert len(whole["articles"]) == 3
    for chunk in (1, 2):
        monkeypatch.setattr(store_module, "WINDOW_CHUNK", chunk)
        assert restored() == whole


def test_a_restart_reads_only_the_window_when_a_live_story_began_long_ago(tmp_path,
                                                                          monkeypatch):
    # Article 1 and the last article tell one live story; the 28 stored between them are
    # old stories that have left the window, so the live members are far apart by id.
    words = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ax", "el", "ori", "und")]
    config = Config(path=str(tmp_path / "c.toml"), database=str(tmp_path / "w.db"),
                    sources=(Source(name="desk", url=str(tmp_path / "f.xml"),
                                    interval_s=3600),))
    aggregator = Aggregator(config)
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def add(number, day, text):
        entry = ParsedEntry(guid=f"g{number}", link=None, title=text.split(".")[0],
                            published=start + timedelta(days=day), content=f"<p>{text}</p>")
        aggregator.ingest_entries("desk", 0, [entry], start + timedelta(days=day))

    story = ("Glacier expedition reaches the summit. " + ALPHA + " " + ALPHA) * 2
    add(0, 10, story)
    for number in range(1, 29):
        topic = " ".join(words[(number * 5 + k) % len(words)] for k in range(12))
        add(number, 0, f"Report {topic}. {topic} {topic}")
    add(29, 10.5, story.replace("reaches", "has reached"))
    aggregator.close()

    def restored():
        store = Store(config.database)
        clusterer = load_clusterer(store, config.clustering, Signer(config.clustering.num_perm))
        state = ({story_id: clusterer.members(story_id) for story_id in clusterer.stories},
                 clusterer.rows.article_id[:clusterer.rows.used].tolist())
        store.close()
        return state

    stories, rows = restored()
    assert list(stories.values()) == [[1, 30]]
    assert rows == [1, 30]
    for chunk in (1, 2, 3):  # by range scan (one member a chunk) and by id (both)
        for readers in (1, 3):  # a part read whole, and in slices by parallel readers
            monkeypatch.setattr(store_module, "WINDOW_CHUNK", chunk)
            monkeypatch.setattr(store_module, "WINDOW_READERS", readers)
            assert restored() == (stories, rows)


def test_recluster_applies_new_settings_and_keeps_statistics(tmp_path, seed_config):
    from dataclasses import replace

    config = load_config(seed_config, environ={})
    aggregator = Aggregator(config)
    aggregator.run_pass()
    documents_before = aggregator.store.term_statistics()
    aggregator.close()

    strict = replace(config, clustering=replace(config.clustering, same_story_threshold=0.99,
                                                long_text_threshold=0.99))
    aggregator = Aggregator(strict)
    assert aggregator.recluster() == 3
    assert aggregator.store.db.execute("SELECT count(*) FROM stories").fetchone() == (3,)
    assert aggregator.store.term_statistics()[0] == documents_before[0] == 3
    aggregator.close()

    aggregator = Aggregator(config)
    assert aggregator.recluster() == 3
    rows = aggregator.store.db.execute(
        "SELECT count(DISTINCT story_id), sum(relation = 'same_story') FROM articles").fetchone()
    assert rows == (1, 2)
    assert sorted(aggregator.store.term_statistics()[1]) == sorted(documents_before[1])
    aggregator.close()


@pytest.mark.parametrize("width", [16, 128, 255, 256, 1024])
def test_equal_values_counts_as_count_nonzero_does(width):
    generator = np.random.default_rng(width)
    rows = generator.integers(0, 3, (40, width), dtype=np.uint16)
    values = generator.integers(0, 3, width, dtype=np.uint16)
    rows[0] = values  # every column equal: the count that a byte could not hold from 256
    rows[1] = values + 1  # none equal
    expected = np.count_nonzero(rows == values, axis=1)
    assert equal_values(rows, values).tolist() == expected.tolist()
    assert expected[0] == width and expected[1] == 0


@pytest.mark.parametrize(("slots", "count", "stories"), [
    (0, 5, 3),  # no candidates
    (10, 50, 20),  # fewer stories than wanted
    (2000, 50, 40),  # enough stories only beyond the closest slots
    (2000, 50, 2000),  # enough among the closest slots
    (400, 50, 2000),  # exactly as many slots as the closest part holds
    (401, 50, 2000),
    (3, 0, 2),  # none wanted
])
def test_closest_stories_are_the_first_distinct_ids_by_closeness(slots, count, stories):
    generator = np.random.default_rng(slots + stories)
    closeness = generator.permutation(10 * slots + 1)[:slots].astype(np.int64)
    story_ids = generator.integers(0, stories, slots)
    in_order = story_ids[np.argsort(-closeness, kind="stable")].tolist()
    expected = list(dict.fromkeys(in_order))[:count]
    assert closest_stories(closeness, story_ids, count) == expected


@pytest.mark.parametrize(("slots", "limit", "counts"), [
    (0, 5, 1),
    (5, 5, 3),  # no more than the limit
    (6, 5, 1),  # all equal: the five newest articles
    (6, 0, 3),  # none wanted
    (50, 5, 32),
    (2000, 100, 3),  # many ties at the cut
    (2000, 1999, 32),
    (13000, 2000, 32),
])
def test_most_shared_keeps_the_most_shared_and_among_equals_the_newest(slots, limit, counts):
    generator = np.random.default_rng(slots + limit)
    slot_numbers = np.sort(generator.choice(10 * slots + 1, slots, replace=False))
    # Slots are reused, so their order is not the articles' order.
    article_ids = generator.permutation(slots).astype(np.int64) + 1
    bands = generator.integers(1, counts + 1, slots)
    expected = slot_numbers[np.lexsort((-article_ids, -bands))[:limit]]
    kept = most_shared(slot_numbers, bands, limit, article_ids)
    assert kept.tolist() == sorted(expected.tolist())


@pytest.mark.skipif(not os.environ.get("AGGREGATOR_REQUIRE_KERNELS"),
                    reason="AGGREGATOR_REQUIRE_KERNELS is not set (.ci/run sets it)")
def test_the_kernels_were_built():
    assert kernels is not None, "aggregator/_kernels.c was not compiled (see pip's output)"


def clusterer_with_rows(generator, slots: int, stories: int, width: int,
                        values: int) -> Clusterer:
    """A clusterer whose article rows (liveness, ids, stories, salient values) are random:
    what the ranking reads of them, with many ties."""
    clusterer = Clusterer(replace(SETTINGS, num_perm=width))
    rows = clusterer.rows
    rows.allocate(slots)
    rows.alive[:slots] = generator.random(slots) < generator.choice([0.0, 0.5, 0.9, 1.0])
    rows.article_id[:slots] = generator.permutation(10 * slots + 1)[:slots] + 1
    rows.story_row[:slots] = generator.integers(0, max(1, stories), slots)
    rows.salient[:slots] = salient_bytes(generator.integers(0, values, (slots, width)))
    return clusterer


@requires_kernels
@pytest.mark.parametrize(("slots", "stories", "width", "values", "found", "count", "limit"), [
    (0, 1, 16, 2, 0, 50, 2000),  # an empty window
    (5, 5, 16, 2, 0, 50, 2000),  # nothing found
    (1, 1, 16, 2, 1, 50, 2000),  # one slot found once
    (40, 3, 16, 2, 200, 50, 2000),  # few stories, many repeats
    (300, 300, 128, 2, 900, 50, 2000),  # ties in the values agreed, stories of one article
    (3000, 500, 128, 3, 20000, 50, 2000),  # more live slots than the limit: ties at the cut
    (300, 300, 16, 2, 900, 50, 7),  # a limit below the stories wanted, ties at the cut
    (300, 300, 16, 2, 300, 50, 1),
    (300, 300, 16, 2, 900, 50, 0),  # no slot compared
    (3000, 2500, 32, 40, 6000, 10, 2000),  # most slots agree in no value (dropped)
    (300, 300, 16, 200, 600, 50, 2000),  # fewer stories agree in a value than are wanted
    (500, 200, 16, 2, 1500, 0, 2000),  # no story wanted
    (2500, 2500, 1024, 2, 5000, 300, 2000),  # wide signatures, many stories wanted
])
def test_the_compiled_ranking_gives_what_the_numpy_ranking_gives(monkeypatch, slots, stories,
                                                                  width, values, found, count,
                                                                  limit):
    monkeypatch.setattr(cluster_module, "CANDIDATE_SLOTS", limit)
    for case in range(4):
        generator = np.random.default_rng([slots, found, count, case])
        clusterer = clusterer_with_rows(generator, slots, stories, width, values)
        clusterer.settings = replace(clusterer.settings, max_candidates=count)
        hits = generator.integers(0, max(1, slots), found).astype(np.int32)
        signature = generator.integers(0, values, width).astype(np.uint16)
        expected = clusterer._closest_story_rows_numpy(hits, signature)
        ranked = clusterer.closest_story_rows(hits, signature)
        assert ranked.tolist() == expected.tolist()
        assert ranked.dtype == np.int64
        assert not clusterer._band_counts.any()  # the scratch is left as it was found


@requires_kernels
@pytest.mark.parametrize(("slots", "stories", "width", "values", "found", "count"), [
    (3000, 1500, 128, 65536, 6000, 50),  # high bytes agree by chance once in 256 values
    (3000, 200, 128, 65536, 6000, 50),  # stories of many members
    (3000, 1500, 128, 512, 6000, 50),  # high bytes of 0 or 1: they bound the count loosely
    (2000, 2000, 16, 65536, 4000, 50),  # narrow rows: many slots of one bound
    (600, 100, 128, 65536, 1200, 200),  # fewer stories than wanted: every row read in full
    (600, 600, 128, 65536, 1200, 1),
    (600, 600, 128, 65536, 1200, 3),  # few stories wanted: the last one decided by a tie
    (3000, 3000, 128, 65536, 6000, 5),
])
def test_the_compiled_ranking_reads_in_full_only_the_rows_that_can_rank(
        slots, stories, width, values, found, count):
    # The kernel reads every candidate's high bytes and the low bytes only of the rows
    # whose high bytes still allow a place among the stories taken: with rows close to
    # the signature in shares drawn as a window's are (most far, a few near), whatever it
    # skips must not change the ranking.
    for case in range(4):
        generator = np.random.default_rng([slots, stories, values, count, case])
        clusterer = clusterer_with_rows(generator, slots, stories, width, values)
        clusterer.settings = replace(clusterer.settings, max_candidates=count)
        signature = generator.integers(0, values, width).astype(np.uint16)
        rows = clusterer.rows
        rows.alive[:slots] = generator.random(slots) < 0.9
        share = generator.beta(0.5, 4, slots)[:, None]
        agreeing = generator.random((slots, width)) < share
        rows.salient[:slots] = salient_bytes(
            np.where(agreeing, signature, salient_values(rows.salient[:slots])))
        hits = generator.integers(0, slots, found).astype(np.int32)
        expected = clusterer._closest_story_rows_numpy(hits, signature)
        assert len(expected)
        assert clusterer.closest_story_rows(hits, signature).tolist() == expected.tolist()


def test_salient_rows_are_kept_as_high_bytes_then_low_bytes():
    values = np.array([[0x12345678, 0xFFFF0001, 0x00000100]], dtype=np.uint32)
    assert salient_bytes(values).tolist() == [[0x56, 0x00, 0x01, 0x78, 0x01, 0x00]]
    assert salient_values(salient_bytes(values)).tolist() == [[0x5678, 0x0001, 0x0100]]
    rows = ArticleRows(num_perm=3, vector_width=1)
    slot = int(rows.allocate(1)[0])
    rows.put_one(slot, article_id=1, story_id=1, story_row=0, shingle=np.zeros(3, np.uint32),
                 salient=values[0], vector_ids=[], vector_weights=[], source=0, priority=0,
                 published_ts=0.0, has_author=False, dated=True, word_count=1)
    assert rows.salient[slot].tolist() == salient_bytes(values)[0].tolist()


@pytest.mark.parametrize(("keep_stored", "width", "vectors"), [
    (True, 4, [3, 4, 0, 2]),  # shorter than the rows, as long, none at all
    (False, 4, [6, 1]),  # wider than the rows: they widen, the rows before padded
    (False, 1, [0, 0, 5]),  # no vector terms kept (vector_terms = 0): width from the terms
])
def test_one_row_put_alone_is_the_row_that_put_writes(keep_stored, width, vectors):
    """``ArticleRows.put_one`` (a committed article) fills a row as ``put`` (restored
    articles) fills it, to the last bit, over a slot that held another article before;
    so does ``put_one`` given the shingle signature's low bits computed ahead."""
    generator = np.random.default_rng(width)
    by_rows, by_one, ahead = (ArticleRows(16, width, keep_stored) for _ in range(3))
    for rows in (by_rows, by_one, ahead):
        rows.allocate(len(vectors))
    # The second time over the first's rows, the lengths the other way round.
    for slot, length in [*enumerate(vectors), *enumerate(vectors[::-1])]:
        shingle = generator.integers(0, 2**32, 16, dtype=np.uint32)
        salient = generator.integers(0, 2**32, 16, dtype=np.uint32)
        ids = generator.integers(0, 1000, length).tolist()
        weights = (generator.random(length) / 3).tolist()
        values = (slot % 3, slot - 1, 1e9 + slot / 7, slot % 2 == 0, slot % 3 != 0, 40 * slot)
        matrix_ids = np.zeros((1, max(length, 1)), dtype=np.int32)
        matrix_ids[0, :length] = ids
        matrix_weights = np.zeros((1, max(length, 1)))
        matrix_weights[0, :length] = weights
        by_rows.put(np.array([slot]), article_ids=[100 + slot], story_ids=[7], story_rows=[2],
                    shingles=shingle[None, :], salients=salient[None, :],
                    vector_ids=matrix_ids, vector_weights=matrix_weights,
                    metadata={name: [value] for name, value in zip(
                        ArticleRows.METADATA, values, strict=True)})
        for rows, bits in ((by_one, None), (ahead, low_bits(np.stack([shingle, salient]))[0])):
            rows.put_one(slot, article_id=100 + slot, story_id=7, story_row=2, shingle=shingle,
                         salient=salient, vector_ids=ids, vector_weights=weights,
                         shingle_bits=bits, **dict(zip(ArticleRows.METADATA, values, strict=True)))
    for name in ArticleRows.ARRAYS:
        expected = getattr(by_rows, name)
        for written in (getattr(by_one, name), getattr(ahead, name)):
            assert written.dtype == expected.dtype, name
            assert written.tobytes() == expected.tobytes(), name
    assert by_rows.shingle_bits.shape[1] == (0 if keep_stored else 2)


@requires_kernels
@pytest.mark.parametrize(("terms", "width", "members", "given"), [
    (10, 1, 0, 1),  # no member
    (10, 4, 3, 2),  # fewer than 8 terms a row: summed in order
    (5000, 8, 50, 8),
    (5000, 60, 400, 60),  # the default: eight running sums and a tail of four
    (5000, 130, 40, 100),  # above 128 terms: summed by halves
    (300, 60, 200, 300),  # the vector gives more terms than a row holds
    (65, 8, 30, 65),  # every term in the vector, the last one alone in its word of bits
])
def test_the_compiled_term_products_are_the_numpy_ones_to_the_last_bit(terms, width, members,
                                                                        given):
    for case in range(3):
        generator = np.random.default_rng([terms, width, members, case])
        clusterer = Clusterer(replace(SETTINGS, vector_terms=width))
        clusterer._dense = np.zeros(terms)  # the scratch, one place a term of the vocabulary
        rows = clusterer.rows
        rows.allocate(max(members, 1) + 5)
        filled = len(rows.vector_ids)
        rows.vector_ids[:] = generator.integers(0, terms, (filled, width))
        rows.vector_weights[:] = generator.random((filled, width)) * (
            generator.random((filled, width)) < 0.7)  # zero padding, as short vectors have
        slots = generator.integers(0, filled, members).astype(np.int64)
        ids = generator.choice(terms, min(given, terms), replace=False).tolist()
        weights = (generator.random(len(ids)) / 3).tolist()
        for vector in ((ids, weights),  # an article's vector, as lists
                       (rows.vector_ids[slots[0] if members else 0],  # a row's, as arrays
                        rows.vector_weights[slots[0] if members else 0])):
            # Slots of another integer type, as a caller might give them, are taken as well.
            products, cosines = clusterer._term_products(*vector, slots.astype(np.int32))
            expected_products, expected_cosines = clusterer._term_products_numpy(*vector, slots)
            assert products.tobytes() == expected_products.tobytes()
            assert cosines.tobytes() == expected_cosines.tobytes()
            assert not clusterer._dense.any()  # the scratch is left as it was found


@requires_kernels
@pytest.mark.parametrize(("argument", "value", "error", "message"), [
    (0, np.array([0, 7], dtype=np.int32), ValueError, "slot 7 outside the 5 rows"),
    (0, np.array([-1], dtype=np.int32), ValueError, "slot -1 outside"),
    (0, np.array([0, 1], dtype=np.int64), TypeError, "found: items of 4 bytes"),
    (4, np.zeros((5, 32), dtype=np.uint16), TypeError, "salient: items of 1 bytes"),
    (4, np.zeros((5, 16), dtype=np.uint8), ValueError, "unequal lengths"),
    (8, np.zeros(2, dtype=np.uint16), ValueError, "unequal lengths"),
    (9, np.zeros(50, dtype=np.int64)[::2], ValueError, "contiguous"),
])
def test_the_compiled_ranking_refuses_arrays_it_cannot_read(argument, value, error, message):
    generator = np.random.default_rng(5)
    clusterer = clusterer_with_rows(generator, 5, 2, 16, 2)
    rows = clusterer.rows
    arguments = [np.array([0, 1], dtype=np.int32), rows.alive[:5], rows.article_id[:5],
                 rows.story_row[:5], rows.salient[:5], np.zeros(16, dtype=np.uint16),
                 10, 25, np.zeros(5, dtype=np.uint16), np.zeros(25, dtype=np.int64)]
    arguments[argument] = value
    with pytest.raises(error, match=message):
        kernels.closest_story_rows(*arguments)
    assert not arguments[8].any()


def stream_with_many_candidates(count: int, seed: int, settings=None) -> list[tuple]:
    """Each decision (with its candidates and their scores) and outcome of ``count``
    articles of overlapping topics, in a window where many stories compete for each; one
    article in five undated, one in nine a long text."""
    generator = np.random.default_rng(seed)
    vocabulary = [f"word{number}" for number in range(400)]
    # Zipf-like: a few words in most articles, so that the candidate sets are large.
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    topics = [generator.choice(len(vocabulary), 12, replace=False, p=weights)
              for _ in range(count // 4)]
    stream = Stream(settings or replace(SETTINGS, max_candidates=20))
    results = []
    for number in range(count):
        topic = topics[int(generator.integers(len(topics)))]
        words = [vocabulary[i] for i in generator.choice(topic, 9)] + [
            vocabulary[i] for i in generator.choice(len(vocabulary), 6, p=weights)]
        decision, outcome = stream.add(" ".join(words[:5]),
                                       " ".join(words * (30 if number % 9 == 0 else 3)),
                                       ts=number * 600.0, source=f"s{number % 7}",
                                       dated=number % 5 != 0)
        results.append((decision, outcome))
    return results


@requires_kernels
def test_the_clusterer_decides_the_same_with_and_without_its_kernels(monkeypatch):
    """End to end: the same stream, with the compiled kernels and with numpy alone, gives
    the same decisions, scores and outcomes."""
    from aggregator import fingerprint as fingerprint_module
    from aggregator import index as index_module

    compiled = stream_with_many_candidates(400, seed=11)
    monkeypatch.setattr(cluster_module, "kernels", None)
    monkeypatch.setattr(index_module, "kernels", None)
    monkeypatch.setattr(fingerprint_module, "kernels", None)
    assert stream_with_many_candidates(400, seed=11) == compiled
    joined = [decision for decision, _outcome in compiled if decision.story_id is not None]
    assert len(joined) > 40  # the stream does join articles into stories
    assert max(len(decision.candidates) for decision in joined) >= 3


@requires_kernels
@pytest.mark.parametrize("settings", [
    # Stories leave the window within the stream: some candidates are no longer live.
    replace(SETTINGS, max_candidates=20, window_days=0.5),
    # Low thresholds, strict support and breadth: many stories reach their threshold and
    # are held back.
    replace(SETTINGS, max_candidates=20, same_story_threshold=0.1, long_text_threshold=0.05,
            member_anchor=1.5, evidence_beyond_one_term=0.9),
])
def test_the_compiled_story_scores_give_the_reference_candidates(settings, monkeypatch):
    """For every article of a stream, the best candidates from the compiled
    ``story_scores`` (every live story scored exactly) equal those of the reference (a rough
    numpy margin for every story, then exact scores in that order until the best five are
    certain), and every live story's values before rounding equal ``_score``'s to the last
    bit; the stream has what the two must agree on."""
    seen = Counter()
    compiled = Clusterer._best_candidates

    def both(self, article, ranked):
        candidates = compiled(self, article, ranked)
        assert candidates == self._best_candidates_numpy(article, ranked)
        # Every live story's values before rounding, compiled and by ``_score``.
        stories = [self._story_at[row] for row in ranked.tolist()]
        columns = self.story_columns
        expected = []
        for position in np.flatnonzero(self._live(ranked, article.published_ts)).tolist():
            row, story = int(ranked[position]), stories[position]
            products, cosines = self._term_products(*self.vector(article),
                                                    np.frombuffer(story.slots, np.int64))
            expected.append((position, self._score(
                article, cosines.tolist(), products, int(columns.canonical_slot[row]),
                float(columns.dated_first_ts[row]), float(columns.dated_last_ts[row]))))
        assert self._story_scores(article, ranked, stories, (len(ranked), 0.0)) == expected
        live = len(expected)
        seen["more live stories than reported"] += live > cluster_module.REPORTED_CANDIDATES
        seen["stories no longer live"] += live < len(ranked)
        seen["undated"] += not article.dated
        for candidate in candidates:
            seen[candidate.held_back] += 1
            seen["a time factor from dates"] += (candidate.time_factor
                                                 != round(settings.undated_time_factor, 4))
        return candidates

    monkeypatch.setattr(Clusterer, "_best_candidates", both)
    stream_with_many_candidates(300, seed=5, settings=settings)
    assert seen["more live stories than reported"] > 50
    assert seen[None] > 100
    assert seen["undated"] > 20 and seen["a time factor from dates"] > 20
    if settings.window_days < 1:
        assert seen["stories no longer live"] > 20
    else:
        assert seen[cluster_module.HELD_BACK_UNSUPPORTED] > 5
        assert seen[cluster_module.HELD_BACK_ONE_TERM] > 5


def recorded_story_scores_call(monkeypatch) -> list:
    """The arguments of the clusterer's first call of the compiled ``story_scores`` in a
    small stream, the scratch emptied as the call leaves it."""
    calls = []

    class Recording:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def story_scores(self, *arguments):
            calls.append(list(arguments))
            return kernels.story_scores(*arguments)

    monkeypatch.setattr(cluster_module, "kernels", Recording())
    stream_with_many_candidates(30, seed=3)
    monkeypatch.setattr(cluster_module, "kernels", kernels)
    arguments = calls[-1]
    arguments[0] = np.zeros_like(arguments[0])
    return arguments


@requires_kernels
@pytest.mark.parametrize(("argument", "value", "error", "message"), [
    (1, 5, TypeError, "story_scores: ids: a sequence expected"),
    (2, [0.5], ValueError, "ids and weights of unequal lengths"),
    (6, [], ValueError, "members and story_rows of unequal lengths"),
    (7, np.array([10**6]), ValueError, "story row 1000000 outside"),
    (8, (), TypeError, "columns: a tuple of 5 arrays expected"),
    (10, (0.0,), TypeError, "article: a tuple of 8 numbers expected"),
    (11, (0, 0.0), ValueError, "a count of at least 1 expected"),
    (13, np.zeros((1, 4)), ValueError, "arrays of unequal shapes"),
    (14, np.zeros(50, dtype=np.int32), TypeError, "held_back: items of 1 bytes"),
])
def test_the_compiled_story_scores_refuse_what_they_cannot_read(monkeypatch, argument, value,
                                                              error, message):
    arguments = recorded_story_scores_call(monkeypatch)
    if argument == 7:  # one story, outside the columns
        arguments[6] = arguments[6][:1]
    if argument == 2:
        arguments[1] = [0, 1]
    arguments[argument] = value
    with pytest.raises(error, match=message):
        kernels.story_scores(*arguments)
    assert not arguments[0].any()  # the scratch is left as it was found


@requires_kernels
def test_the_compiled_story_scores_refuse_a_member_or_term_outside_the_window(monkeypatch):
    arguments = recorded_story_scores_call(monkeypatch)
    members = [array("q", slots) for slots in arguments[6]]
    members[0].append(10**6)
    with pytest.raises(ValueError, match="slot 1000000 outside"):
        kernels.story_scores(*arguments[:6], members, *arguments[7:])
    with pytest.raises(ValueError, match="term 99999999 outside"):
        kernels.story_scores(arguments[0], [99999999], [1.0], *arguments[3:])
    assert not arguments[0].any()


def propose_benchmark(*arguments: str) -> dict:
    """The last line (JSON) of ``benchmarks/propose.py`` on a small window."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "propose.py"), *arguments,
         "--window", "300", "--probe", "40", "--rounds", "2"],
        capture_output=True, text=True, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


@requires_kernels
@pytest.mark.parametrize("step", ["propose", "fingerprint"])
def test_the_propose_benchmark_times_the_kernels_against_numpy(step):
    """``benchmarks/propose.py --against-numpy``: this tree with and without its compiled
    kernels, on one window, making the same decisions (or, ``--step fingerprint``, the
    same fingerprints and vectors)."""
    result = propose_benchmark("--against-numpy", "--step", step)
    assert result["step"] == step
    assert result["same_decisions"] is True
    assert result["against_ms_per_article"]["median_ms"] > 0


@pytest.mark.parametrize(("change", "same"), [
    (None, True),
    (("REPORTED_CANDIDATES = 5", "REPORTED_CANDIDATES = 1"), False),
])
def test_the_propose_benchmark_times_another_checkout_and_compares_decisions(tmp_path, change,
                                                                           same):
    """``benchmarks/propose.py --against`` runs another checkout's clusterer methods on the
    same window: the decisions agree with an unchanged copy, and a change that alters them
    (fewer candidates reported) is caught."""
    from conftest import ROOT

    source = (ROOT / "aggregator" / "cluster.py").read_text()
    if change:
        assert change[0] in source
        source = source.replace(change[0], change[1])
    (tmp_path / "aggregator").mkdir()
    (tmp_path / "aggregator" / "cluster.py").write_text(source)
    result = propose_benchmark("--against", str(tmp_path))
    assert result["same_decisions"] is same
    assert result["window_articles"] == 300 and result["probe"] == 40

