"""Story clustering: LSH finds candidates, verification decides.

The decisions are pure functions (``decide``, ``canonical_key``, ``relation_to_canonical``);
``Clusterer`` holds the in-memory state they read: two datasketch LSH indexes, the stories of
the time window with their centroids, and the online term statistics.  It never touches SQL:
the pipeline asks it for a ``Decision``, stores the article, then commits the decision here.

How an article is placed:

1. Near-copy search: LSH over word-shingle MinHashes at ``duplicate_threshold``; a candidate is
   verified by its estimated Jaccard.  A verified near-copy puts the article in the copy's
   story as a ``duplicate``.
2. Otherwise same-story search: LSH over salient-term MinHashes at ``candidate_threshold``
   gives candidate articles; their live stories are scored by the mean TF-IDF cosine between
   the article and the story's members, times a time factor, against a threshold that depends
   on text length; more than half of the members must support the match, so one look-alike
   member cannot drag an unrelated article in.  The story with the largest margin wins; with
   none above its threshold the article starts a new story.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from datasketch import MinHashLSH

from .config import ClusteringSettings
from .fingerprint import Fingerprint, TermStatistics, cosine, jaccard, tfidf_vector, unit_dot

Relation = Literal["canonical", "duplicate", "same_story"]
DAY_S = 86400.0
# Support is counted over a story's latest members only, to bound the cost for big stories.
MAX_SUPPORT_MEMBERS = 16


@dataclass
class ClusterArticle:
    """An article as the clusterer sees it.

    ``vector`` is its TF-IDF vector as weighed when it arrived; it is stored with the article
    so that a restart rebuilds every story centroid exactly as it was.
    """

    article_id: int | None
    source: str
    priority: int
    published_ts: float
    has_author: bool
    fingerprint: Fingerprint
    vector: dict[str, float] | None = None
    dated: bool = True

    @property
    def word_count(self) -> int:
        return self.fingerprint.word_count


@dataclass
class StoryState:
    story_id: int
    members: list[int] = field(default_factory=list)
    centroid: dict[str, float] = field(default_factory=dict)
    canonical_id: int | None = None
    first_ts: float = math.inf
    last_ts: float = -math.inf
    dated_first_ts: float = math.inf
    dated_last_ts: float = -math.inf

    @property
    def dated(self) -> bool:
        return self.dated_first_ts <= self.dated_last_ts

    def mean_similarity(self, vector: dict[str, float]) -> float:
        """Mean cosine between ``vector`` and the members (their vectors are unit length).

        It is the dot product with the centroid sum divided by the member count, so it costs
        one pass over the vector.  Unlike the cosine with the centroid it falls as a story's
        members drift apart, so a story cannot grow into a catch-all for its whole topic.
        """
        if not self.members:
            return 0.0
        dot = sum(w * self.centroid.get(t, 0.0) for t, w in vector.items())
        return dot / len(self.members)


@dataclass(frozen=True)
class Candidate:
    story_id: int
    score: float
    cosine: float
    time_factor: float
    threshold: float
    shared_terms: tuple[str, ...] = ()

    @property
    def margin(self) -> float:
        return self.score - self.threshold


@dataclass(frozen=True)
class NearCopy:
    article_id: int
    story_id: int
    jaccard: float


@dataclass(frozen=True)
class Decision:
    relation: Literal["new_story", "duplicate", "same_story"]
    story_id: int | None
    score: float
    threshold: float
    matched_article_id: int | None = None
    candidates: tuple[Candidate, ...] = ()
    near_copies: tuple[NearCopy, ...] = ()

    @property
    def reason(self) -> str:
        if self.relation == "duplicate":
            return (f"near-copy of article {self.matched_article_id} "
                    f"(shingle Jaccard {self.score:.2f} >= {self.threshold:.2f})")
        if self.relation == "same_story":
            return (f"matches story {self.story_id} "
                    f"(score {self.score:.3f} >= threshold {self.threshold:.3f})")
        if self.candidates:
            best = self.candidates[0]
            return (f"new story: best candidate story {best.story_id} scored "
                    f"{best.score:.3f} < {self.threshold:.3f}")
        return "new story: no candidate shared enough salient terms"


def time_factor(article_ts: float, first_ts: float, last_ts: float, sigma_days: float) -> float:
    """Gaussian decay with the time from an article to the nearest end of a story's span.

    Inside the span there is no penalty: a story that has been running for days still takes
    a late follow-up as readily as an early one.
    """
    gap = max(0.0, first_ts - article_ts, article_ts - last_ts) / DAY_S
    return math.exp(-(gap * gap) / (2.0 * sigma_days * sigma_days))


def _long_text_share(words: int, settings: ClusteringSettings) -> float:
    """0 at ``short_text_words`` or fewer, 1 at ``long_text_words`` or more, log-linear between."""
    low, high = settings.short_text_words, settings.long_text_words
    if words <= low or high <= low:
        return 0.0
    if words >= high:
        return 1.0
    return math.log(words / low) / math.log(high / low)


def same_story_threshold(words: int, settings: ClusteringSettings) -> float:
    """The score an article must reach, by how long the shorter of the two texts is.

    Long texts share a smaller part of their vocabulary even when they report one event, and
    two long texts on different events share even less; short texts (title and lead) score
    higher on both.  The threshold slides from ``same_story_threshold`` for short texts down
    to ``long_text_threshold`` for long ones.
    """
    share = _long_text_share(words, settings)
    return settings.same_story_threshold + share * (
        settings.long_text_threshold - settings.same_story_threshold)


def time_sigma_days(words: int, settings: ClusteringSettings) -> float:
    """How far apart in time two write-ups of one story may be, by text length.

    Time is a prior; the text is the evidence.  A title and a lead say little, so an article a
    few days off is more likely a later, different event on the same topic; two full texts
    that match are one story even when their dates are days apart (follow-ups, late
    analyses).  Slides from ``time_sigma_days`` to ``long_text_time_sigma_days``.
    """
    share = _long_text_share(words, settings)
    return settings.time_sigma_days + share * (
        settings.long_text_time_sigma_days - settings.time_sigma_days)


def decide(near_copies: list[NearCopy], candidates: list[Candidate],
           settings: ClusteringSettings) -> Decision:
    """Where an article goes, from verified near-copies and scored candidate stories."""
    ranked = tuple(sorted(candidates, key=lambda c: (-c.margin, c.story_id)))
    copies = tuple(sorted(near_copies, key=lambda c: (-c.jaccard, c.article_id)))
    if copies and copies[0].jaccard >= settings.duplicate_threshold:
        best = copies[0]
        return Decision("duplicate", best.story_id, best.jaccard, settings.duplicate_threshold,
                        matched_article_id=best.article_id, candidates=ranked,
                        near_copies=copies)
    if ranked and ranked[0].margin >= 0:
        return Decision("same_story", ranked[0].story_id, ranked[0].score,
                        ranked[0].threshold, candidates=ranked, near_copies=copies)
    return Decision("new_story", None, ranked[0].score if ranked else 0.0,
                    ranked[0].threshold if ranked else settings.same_story_threshold,
                    candidates=ranked, near_copies=copies)


def _completeness_bucket(word_count: int) -> int:
    # Texts within ~25% of each other's length count as equally complete, so that the next
    # criterion (usually "earliest") decides between them rather than a few extra words.
    return int(math.log(word_count + 1) / math.log(1.25))


def canonical_key(article: ClusterArticle, policy: tuple[str, ...]) -> tuple:
    """Sort key: the smallest key is the best version under the configured policy."""
    parts: list[float] = []
    for criterion in policy:
        if criterion == "priority":
            parts.append(-article.priority)
        elif criterion == "completeness":
            parts.append(-_completeness_bucket(article.word_count))
        elif criterion == "earliest":
            parts.append(article.published_ts)
        elif criterion == "has_author":
            parts.append(0 if article.has_author else 1)
    parts.append(article.article_id or 0)
    return tuple(parts)


def canonical_reason(best: ClusterArticle, runner_up: ClusterArticle | None,
                     policy: tuple[str, ...]) -> str:
    """The first policy criterion on which the canonical beats the next-best version."""
    if runner_up is None:
        return "first version of the story"
    best_key = canonical_key(best, policy)
    other_key = canonical_key(runner_up, policy)
    for criterion, mine, theirs in zip(policy, best_key, other_key, strict=False):
        if mine != theirs:
            return {
                "priority": f"higher source priority ({best.priority} > {runner_up.priority})",
                "completeness": f"more complete text ({best.word_count} words vs "
                                f"{runner_up.word_count})",
                "earliest": "published earlier",
                "has_author": "names its author",
            }[criterion]
    return "tie on every criterion; the first stored wins"


def relation_to_canonical(member: ClusterArticle, canonical: ClusterArticle,
                          settings: ClusteringSettings) -> tuple[Relation, float]:
    """A member's relation to the story's canonical, with the verified similarity."""
    if member.article_id == canonical.article_id:
        return "canonical", 1.0
    overlap = jaccard(member.fingerprint.shingle_signature,
                      canonical.fingerprint.shingle_signature)
    if overlap >= settings.duplicate_threshold:
        return "duplicate", round(overlap, 4)
    similarity = cosine(member.vector or {}, canonical.vector or {})
    return "same_story", round(similarity, 4)


@dataclass(frozen=True)
class StoryOutcome:
    """What the store must write after an article joined or started a story."""

    story_id: int
    canonical_id: int
    previous_canonical_id: int | None
    canonical_reason: str | None
    member_relations: dict[int, tuple[Relation, float]]
    first_ts: float
    last_ts: float


class Clusterer:
    """The in-memory clustering index of the time window."""

    def __init__(self, settings: ClusteringSettings, stats: TermStatistics | None = None):
        self.settings = settings
        self.stats = stats or TermStatistics(settings.idf_prior_docs)
        self.duplicate_index = MinHashLSH(threshold=settings.duplicate_threshold,
                                          num_perm=settings.num_perm)
        self.candidate_index = MinHashLSH(threshold=settings.candidate_threshold,
                                          num_perm=settings.num_perm)
        self.articles: dict[int, ClusterArticle] = {}
        self.story_of: dict[int, int] = {}
        self.stories: dict[int, StoryState] = {}

    # -- deciding ---------------------------------------------------------------------------

    def vector(self, article: ClusterArticle) -> dict[str, float]:
        """The article's vector, weighed with the statistics as they are now, once."""
        if article.vector is None:
            article.vector = tfidf_vector(article.fingerprint.term_counts, self.stats,
                                          self.settings.vector_terms)
        return article.vector

    def _live(self, story: StoryState, ts: float) -> bool:
        return ts - story.last_ts <= self.settings.window_days * DAY_S

    def near_copies(self, article: ClusterArticle) -> list[NearCopy]:
        found = []
        for key in self.duplicate_index.query(article.fingerprint.shingle_signature):
            other = self.articles.get(key)
            story_id = self.story_of.get(key)
            if other is None or story_id is None:
                continue
            if not self._live(self.stories[story_id], article.published_ts):
                continue
            found.append(NearCopy(key, story_id, round(jaccard(
                article.fingerprint.shingle_signature, other.fingerprint.shingle_signature), 4)))
        return found

    def candidate_stories(self, article: ClusterArticle,
                          vector: dict[str, float]) -> list[Candidate]:
        keys = [key for key in self.candidate_index.query(article.fingerprint.salient_signature)
                if key in self.story_of]
        if not keys:
            return []
        # Rank stories by the best salient-set Jaccard estimate of any member, so that the
        # verification budget goes to the closest stories, not to the biggest.
        signatures = np.stack([self.articles[k].fingerprint.salient_signature.hashvalues
                               for k in keys])
        estimates = (signatures == article.fingerprint.salient_signature.hashvalues).mean(axis=1)
        # Closest first; among equals the newest article first.
        order = np.lexsort((-np.asarray(keys), -estimates))
        ranked: list[int] = []
        seen: set[int] = set()
        for index in order.tolist():
            story_id = self.story_of[keys[index]]
            if story_id not in seen:
                seen.add(story_id)
                ranked.append(story_id)
                if len(ranked) >= self.settings.max_candidates:
                    break
        candidates = []
        salient = set(article.fingerprint.salient)
        for story_id in ranked:
            story = self.stories[story_id]
            if not self._live(story, article.published_ts):
                continue
            similarity = story.mean_similarity(vector)
            canonical = self.articles[story.canonical_id]
            # The length of the pair: a short text beside a long one scores like neither.
            words = int(math.sqrt(max(1, article.word_count) * max(1, canonical.word_count)))
            if article.dated and story.dated:
                factor = time_factor(article.published_ts, story.dated_first_ts,
                                     story.dated_last_ts, time_sigma_days(words, self.settings))
            else:
                # A fetch time stands in for a missing date; it is no evidence that two
                # articles were written together, so it earns no "same moment" credit.
                factor = self.settings.undated_time_factor
            threshold = same_story_threshold(words, self.settings)
            # Support is only worth counting for a story the article would otherwise join.
            if similarity * factor >= threshold and not self._supported(vector, story, threshold):
                similarity = 0.0
            shared = tuple(sorted(salient & set(canonical.fingerprint.salient)))
            candidates.append(Candidate(story_id, round(similarity * factor, 4),
                                        round(similarity, 4), round(factor, 4),
                                        round(threshold, 4), shared))
        return candidates

    def _supported(self, vector: dict[str, float], story: StoryState, threshold: float) -> bool:
        """Whether more than half of the story's (latest) members resemble the article.

        A member resembles it when their cosine reaches ``member_anchor`` x the threshold.
        The mean alone could be carried by one look-alike member; with this, an article that
        resembles only the member bridging two topics cannot join (no chaining).
        """
        members = story.members[-MAX_SUPPORT_MEMBERS:]
        if len(members) == 1:
            return True
        floor = self.settings.member_anchor * threshold
        # Vectors are unit length: the dot product is the cosine.
        support = sum(1 for m in members
                      if unit_dot(vector, self.articles[m].vector or {}) >= floor)
        return support * 2 > len(members)

    def propose(self, article: ClusterArticle) -> Decision:
        vector = self.vector(article)
        return decide(self.near_copies(article), self.candidate_stories(article, vector),
                      self.settings)

    # -- committing -------------------------------------------------------------------------

    def commit(self, article: ClusterArticle, story_id: int) -> StoryOutcome:
        """Record a stored article as a member of ``story_id`` (new or existing)."""
        assert article.article_id is not None
        vector = self.vector(article)
        story = self.stories.get(story_id)
        if story is None:
            story = self.stories[story_id] = StoryState(story_id)
        self._index(article, story, vector)
        self.stats.add_document(article.fingerprint.term_counts)
        # Counted; from now on only the vector and the signatures are read, so the full term
        # counts (the largest part of an article in memory) are let go.
        article.fingerprint = replace(article.fingerprint, term_counts={},
                                      title_terms=frozenset())
        return self._elect(story, article)

    def _index(self, article: ClusterArticle, story: StoryState,
               vector: dict[str, float]) -> None:
        article_id = article.article_id
        self.articles[article_id] = article
        self.story_of[article_id] = story.story_id
        story.members.append(article_id)
        for term, weight in vector.items():
            story.centroid[term] = story.centroid.get(term, 0.0) + weight
        story.first_ts = min(story.first_ts, article.published_ts)
        story.last_ts = max(story.last_ts, article.published_ts)
        if article.dated:
            story.dated_first_ts = min(story.dated_first_ts, article.published_ts)
            story.dated_last_ts = max(story.dated_last_ts, article.published_ts)
        self.duplicate_index.insert(article_id, article.fingerprint.shingle_signature,
                                    check_duplication=False)
        self.candidate_index.insert(article_id, article.fingerprint.salient_signature,
                                    check_duplication=False)

    def _elect(self, story: StoryState, newcomer: ClusterArticle) -> StoryOutcome:
        policy = self.settings.canonical_policy
        members = sorted((self.articles[m] for m in story.members),
                         key=lambda a: canonical_key(a, policy))
        best = members[0]
        previous = story.canonical_id
        changed = previous != best.article_id
        story.canonical_id = best.article_id
        # Relations are relative to the canonical: all change with it, else only the newcomer's.
        affected = members if changed else [newcomer]
        relations = {m.article_id: relation_to_canonical(m, best, self.settings)
                     for m in affected}
        return StoryOutcome(
            story_id=story.story_id,
            canonical_id=best.article_id,
            previous_canonical_id=previous,
            canonical_reason=canonical_reason(best, members[1] if len(members) > 1 else None,
                                              policy) if changed else None,
            member_relations=relations,
            first_ts=story.first_ts,
            last_ts=story.last_ts,
        )

    def restore(self, article: ClusterArticle, story_id: int, canonical_id: int) -> None:
        """Put back a stored article at start-up (statistics are restored separately)."""
        story = self.stories.get(story_id)
        if story is None:
            story = self.stories[story_id] = StoryState(story_id)
        assert article.vector is not None, "a restored article carries its stored vector"
        self._index(article, story, article.vector)
        story.canonical_id = canonical_id

    def evict_before(self, cutoff_ts: float) -> int:
        """Drop stories whose newest member is older than ``cutoff_ts``; returns how many."""
        stale = [s for s in self.stories.values() if s.last_ts < cutoff_ts]
        for story in stale:
            for article_id in story.members:
                self.duplicate_index.remove(article_id)
                self.candidate_index.remove(article_id)
                self.articles.pop(article_id, None)
                self.story_of.pop(article_id, None)
            del self.stories[story.story_id]
        return len(stale)
