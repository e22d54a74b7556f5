"""Story clustering: LSH finds candidates, verification decides.

The decisions are pure functions (``decide``, ``canonical_key``, ``relation_from``);
``Clusterer`` holds the in-memory state they read: two LSH indexes (``index.py``), the
stories of the time window, and the online term statistics.  An article's signatures, vector
and salient terms live in rows of numpy arrays (``ArticleRows``), a few kilobytes less per
article than Python objects would take.  It never touches SQL: the pipeline asks it for a
``Decision``, stores the article, then commits the decision here.

How an article is placed:

1. Near-copy search: LSH over word-shingle MinHashes at ``duplicate_threshold``; a candidate is
   verified by its estimated Jaccard.  A verified near-copy puts the article in the copy's
   story as a ``duplicate``.
2. Otherwise same-story search: LSH over salient-term MinHashes at ``candidate_threshold``
   gives candidate articles; their live stories are scored by the mean TF-IDF cosine between
   the article and the story's members (one numpy pass over all of them), times a time
   factor, against a threshold that depends
   on text length; more than half of the members must support the match, so one look-alike
   member cannot drag an unrelated article in.  The story with the largest margin wins; with
   none above its threshold the article starts a new story.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from operator import attrgetter
from typing import Literal, Protocol

import numpy as np

from .config import ClusteringSettings
from .fingerprint import Fingerprint, TermStatistics, Vocabulary, normalised_positions
from .index import lsh_parameters, make_index
from .memory import enlarge, keep_large_arrays_movable
from .native import kernels
from .normalize import PUBLISHED_AHEAD_ALLOWED

Relation = Literal["canonical", "duplicate", "same_story"]
DAY_S = 86400.0
# Support is counted over a story's latest members only, to bound the cost for big stories.
MAX_SUPPORT_MEMBERS = 16
# Candidate articles whose salient signatures are compared in full, chosen by shared bands.
CANDIDATE_SLOTS = 2000
# Candidates scored exactly and kept with a decision (``aggregator explain`` shows them).
REPORTED_CANDIDATES = 5
# Why a candidate story above its threshold is held back (``Candidate.held_back``).
HELD_BACK_UNSUPPORTED = ("at most half of the story's latest members resemble the article "
                         "(member_anchor)")
HELD_BACK_ONE_TERM = "the score rests on one shared term (evidence_beyond_one_term)"
# By the codes of the compiled ``story_scores``.
HELD_BACK = (None, HELD_BACK_UNSUPPORTED, HELD_BACK_ONE_TERM)
# How far a rough (numpy) margin may be from the exact one.
ROUGH_TOLERANCE = 1e-3
# Rounding a candidate's score and threshold to four places moves its margin by at most
# 1e-4, so two margins may change places when they are within 2e-4; beyond this, never.
MARGIN_ROUNDING = 3e-4
# Evicted rows stay resident (and in the band indexes) until a compaction lets new articles
# reuse them: at this share of the window.  A compaction of a 100,000-article window takes
# about 20 ms, so at 3% about 7 us an article; the dead rows and the fresh rows written
# meanwhile raise the resident high-water by that share (a peak of 331 MB at 250,000 stream
# articles at a tenth, 308 MB at 3%; at a quarter up to 30 MB more than at a tenth).
COMPACT_AT_DEAD_SHARE = 0.03
# ... and at least this many, so that a small window is not compacted at every eviction.
COMPACT_AT_DEAD_MIN = 1024
# Rows of the window read at a time by ``terms_held``.
HELD_BLOCK_ROWS = 8192


@dataclass(slots=True)
class ClusterArticle:
    """An article as the clusterer sees it.

    It carries its ``fingerprint`` and, once weighed, its TF-IDF ``vector`` until it is
    committed; then everything the clusterer keeps of it moves into the window's arrays (a
    row of ``ArticleRows``), and the object itself is dropped.  The vector is weighed once,
    when the article arrives, and stored with it, so that a restart scores against exactly
    the same vectors.
    """

    article_id: int | None
    source: str
    priority: int
    published_ts: float
    has_author: bool
    fingerprint: Fingerprint | None
    # The vector, once weighed: its terms' vocabulary ids and their weights, strongest first.
    vector_ids: list[int] | None = None
    vector_weights: list[float] | None = None
    dated: bool = True
    word_count: int = 0
    # Band keys of the signatures, when computed ahead (a batch at once) or already once.
    shingle_keys: np.ndarray | None = None
    salient_keys: np.ndarray | None = None
    # The shingle signature's ``low_bits``, when computed ahead (a batch at once).
    shingle_bits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.fingerprint is not None:
            self.word_count = self.fingerprint.word_count


class StoryColumns:
    """What scoring reads of each live story, in arrays indexed by the story's row: an
    article's candidate stories (50 by default) are then filtered and scored by gathers,
    where reading each story's attributes in Python took about a twentieth of the writer.

    A row freed by an evicted story is handed to the next new story.
    """

    FLOATS = ("first_ts", "last_ts", "dated_first_ts", "dated_last_ts")
    ARRAYS = (*FLOATS, "canonical_slot", "size")

    def __init__(self) -> None:
        self.first_ts = np.zeros(0, dtype=np.float64)
        self.last_ts = np.zeros(0, dtype=np.float64)
        # Dated members only (the article's date came from its feed); inf and -inf: none.
        self.dated_first_ts = np.zeros(0, dtype=np.float64)
        self.dated_last_ts = np.zeros(0, dtype=np.float64)
        self.canonical_slot = np.zeros(0, dtype=np.int64)
        self.size = np.zeros(0, dtype=np.int64)
        self.used = 0
        self.free: list[int] = []

    def allocate(self, count: int) -> list[int]:
        """Rows for ``count`` new stories (freed ones first), with no member yet."""
        rows = [self.free.pop() for _ in range(min(count, len(self.free)))]
        needed = count - len(rows)
        if needed:
            if self.used + needed > len(self.size):
                capacity = max(1024, len(self.size) + len(self.size) // 4,
                               self.used + needed)
                for name in self.ARRAYS:
                    enlarge(self, name, capacity)
            rows.extend(range(self.used, self.used + needed))
            self.used += needed
        # One story at a time is the usual case: a scalar assignment takes a sixth of the
        # time of one through a list of rows (0.36 against 2.3 us).
        at = rows[0] if count == 1 else rows
        self.first_ts[at] = self.dated_first_ts[at] = math.inf
        self.last_ts[at] = self.dated_last_ts[at] = -math.inf
        self.canonical_slot[at] = -1
        self.size[at] = 0
        return rows

    def release(self, rows: list[int]) -> None:
        self.size[rows] = 0
        self.free.extend(rows)

    def live_rows(self) -> np.ndarray:
        """The rows of the live stories, in row order: a story has a member from its
        first commit on, and a freed row has none."""
        return np.flatnonzero(self.size[:self.used] > 0)

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.ARRAYS)


_ROW = attrgetter("row")


def has_dated_span(dated_first_ts, dated_last_ts):
    """Whether a story has a member dated by its feed (its dated span is not empty, see
    ``StoryColumns``); for single times or for arrays of them."""
    return dated_first_ts <= dated_last_ts


def _column(name: str) -> property:
    """A ``StoryState`` attribute kept in ``StoryColumns``' array of that name."""
    convert = float if name in StoryColumns.FLOATS else int

    def get(story: StoryState):
        return convert(getattr(story.columns, name)[story.row])

    def set_(story: StoryState, value) -> None:
        getattr(story.columns, name)[story.row] = value

    return property(get, set_)


@dataclass(slots=True)
class StoryState:
    """A live story: the rows of its members in order of arrival (the article ids are in
    the rows), and its canonical.  Its times, size and canonical's row are in its row of
    ``columns``."""

    story_id: int
    columns: StoryColumns
    row: int
    # An array of machine integers: a list would hold an int object per member.
    slots: array = field(default_factory=lambda: array("q"))
    canonical_id: int | None = None
    # The canonical policy under which the canonical was last elected among all members;
    # None when it came from the store (elected under another policy, perhaps, or other
    # source priorities).
    elected_under: tuple[str, ...] | None = None

    first_ts = _column("first_ts")
    last_ts = _column("last_ts")
    dated_first_ts = _column("dated_first_ts")
    dated_last_ts = _column("dated_last_ts")
    canonical_slot = _column("canonical_slot")

    @property
    def dated(self) -> bool:
        return has_dated_span(self.dated_first_ts, self.dated_last_ts)


class StoredFingerprints(Protocol):
    """What the clusterer may ask the store for instead of holding it."""

    def shingle_signatures(self, article_ids: list[int]) -> np.ndarray: ...


BITS_SET = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def low_bits(signatures: np.ndarray) -> np.ndarray:
    """The lowest bit of each value of a signature (or of each row of signatures), eight
    values to a byte."""
    # The low byte of each little-endian value, not ``signatures & 1``: a restart packs
    # every restored row's, and the byte view copies none of the values (8 times faster).
    low_bytes = np.ascontiguousarray(signatures, dtype="<u4").view(np.uint8)[..., ::4]
    return np.packbits(low_bytes & 1, axis=-1, bitorder="little")


def most_equal_values(bits: np.ndarray, other: np.ndarray, num_perm: int) -> np.ndarray:
    """For each row of ``bits`` (``low_bits`` of signatures), the most values its signature
    can have equal to the signature whose low bits are ``other``: two equal values have
    the same lowest bit, so every differing bit is a differing value.  Unrelated values
    agree in that bit half the time, so the bound is near the truth only for near-copies.
    """
    return num_perm - BITS_SET[bits ^ other].sum(axis=1, dtype=np.int64)


def equal_values(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many columns of each row of ``rows`` equal ``values``.

    ``count_nonzero(rows == values, axis=1)``, four times faster: numpy counts along an axis
    by converting to integers and summing, where einsum adds the bytes of the booleans
    directly (exact while a row has fewer than 256 columns).
    """
    equal = rows == values
    if rows.shape[1] < 256:
        return np.einsum("ij->i", equal.view(np.uint8))
    return np.count_nonzero(equal, axis=1)


def salient_bytes(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Salient signatures (a row, or rows) as ``ArticleRows`` keeps them: of each value's low
    16 bits, the high bytes of the row, then its low bytes; written into ``out`` (uint8) if
    given, such as the window's own row."""
    values = np.asarray(values)
    width = values.shape[-1]
    if out is None:
        out = np.empty((*values.shape[:-1], 2 * width), dtype=np.uint8)
    # An assignment to uint8 keeps the low byte of each value.
    out[..., :width] = values >> 8
    out[..., width:] = values
    return out


def salient_values(rows: np.ndarray) -> np.ndarray:
    """The low 16 bits of each value of salient rows kept as ``salient_bytes``."""
    width = rows.shape[-1] // 2
    return (rows[..., :width].astype(np.uint16) << 8) | rows[..., width:]


def share_a_band(signatures: np.ndarray, signature: np.ndarray, bands: int,
                 rows: int) -> np.ndarray:
    """Whether each row of ``signatures`` equals ``signature`` in a whole band."""
    width = bands * rows
    equal = signatures[:, :width] == signature[:width]
    return equal.reshape(len(signatures), bands, rows).all(axis=2).any(axis=1)


def most_shared(slots: np.ndarray, bands: np.ndarray, limit: int,
                newest: np.ndarray) -> np.ndarray:
    """The ``limit`` of ``slots`` (in ascending order) with the largest ``bands``, equal
    counts taken by the largest ``newest`` (the slots' article ids, all different): the
    slots that a sort by descending count, then descending id, would put first (in
    ascending order, not in that one), in linear time instead of a sort's.

    Ties go by article, not by slot, because a slot number says nothing of the article: an
    evicted article's slot is handed to a later one, at a moment that depends on when the
    indexes were last compacted, and the candidates (so the decisions) must not.
    """
    if slots.size <= limit:
        return slots
    if limit <= 0:
        return slots[:0]
    cut = np.partition(bands, bands.size - limit)[bands.size - limit]
    keep = bands > cut
    tied = np.flatnonzero(bands == cut)
    wanted = limit - int(np.count_nonzero(keep))
    if wanted < tied.size:
        tied = tied[np.argpartition(-newest[tied], wanted - 1)[:wanted]]
    keep[tied] = True
    return slots[keep]


def closest_stories(closeness: np.ndarray, story_ids: np.ndarray, count: int) -> list[int]:
    """The first ``count`` distinct ``story_ids`` in order of descending ``closeness`` (whose
    values are all different, so that the order is one).

    The closest few hundred slots usually hold enough stories: only they are sorted, and
    the rest (thousands of slots in a large window) only when they do not.
    """
    head = 8 * count
    if 0 < head < closeness.size:
        top = np.argpartition(-closeness, head - 1)[:head]
        first = dict.fromkeys(story_ids[top[np.argsort(-closeness[top])]].tolist())
        if len(first) >= count:
            return list(islice(first, count))
    first = dict.fromkeys(story_ids[np.argsort(-closeness)].tolist())
    return list(islice(first, count))


def beyond_one_term(cosines: list[float], term_products: np.ndarray) -> list[float]:
    """Each row's cosine less its strongest term (``term_products``: one row of per-term
    products a member, whose sums are ``cosines``)."""
    return (np.asarray(cosines) - term_products.max(axis=1, initial=0.0)).tolist()


def in_order_sum(values: list[float]) -> float:
    """The sum of ``values`` added in order from zero, as the compiled ``story_scores`` adds
    them: ``sum`` compensates its float sums from Python 3.12 on."""
    total = 0.0
    for value in values:
        total += value
    return total


def best_first(candidate: Candidate) -> tuple[float, int]:
    """The order of candidates, best first: the largest margin, then the lowest story id."""
    return -candidate.margin, candidate.story_id


def best_candidates(candidates: list[Candidate]) -> list[Candidate]:
    """The ``REPORTED_CANDIDATES`` best, best first (``best_first``)."""
    return sorted(candidates, key=best_first)[:REPORTED_CANDIDATES]


class ArticleRows:
    """Per-article arrays of the window, one row per slot; they grow by a quarter at a time.

    A slot freed by eviction is reused only after the LSH indexes have dropped it.
    """

    ARRAYS = ("shingle", "shingle_bits", "salient", "vector_ids", "vector_weights", "article_id",
              "story_id", "story_row", "alive", "source", "priority", "published_ts",
              "has_author", "dated", "word_count")
    # What the canonical policy and the scoring read of a member, 22 bytes a row (as
    # ``ClusterArticle`` objects in a dict they took about 270).
    METADATA = ("source", "priority", "published_ts", "has_author", "dated", "word_count")

    def __init__(self, num_perm: int, vector_width: int, keep_stored: bool = True):
        """``keep_stored``: also hold what the store can give when it is asked (the shingle
        signatures); without a store they must be held here."""
        self.capacity = 0
        self.num_perm = num_perm
        self.keep_stored = keep_stored
        self.shingle = np.zeros((0, num_perm if keep_stored else 0), dtype=np.uint32)
        # Where the store holds the shingle signatures, the lowest bit of each value (16
        # bytes a row with 128 permutations): enough to see that a member cannot be a
        # duplicate of its story's canonical without reading either signature back
        # (``most_equal_values``).
        self.shingle_bits = np.zeros((0, 0 if keep_stored else (num_perm + 7) // 8),
                                     dtype=np.uint8)
        # Only compared for equality, to rank candidates: the low 16 bits of each value
        # agree by chance once in 65,536 values, which moves a ranking estimate by about
        # 0.002% and halves the largest array of the window.  Kept as bytes, a row's high
        # bytes before its low ones (``salient_bytes``): the ranking reads every candidate's
        # high bytes, half the row, and the low bytes only of those that can still rank.
        self.salient = np.zeros((0, 2 * num_perm), dtype=np.uint8)
        self.vector_ids = np.zeros((0, max(1, vector_width)), dtype=np.int32)
        self.vector_weights = np.zeros((0, max(1, vector_width)), dtype=np.float32)
        self.article_id = np.zeros(0, dtype=np.int64)
        self.story_id = np.zeros(0, dtype=np.int64)
        self.story_row = np.zeros(0, dtype=np.int32)  # the story's row of ``StoryColumns``
        self.alive = np.zeros(0, dtype=bool)
        self.source = np.zeros(0, dtype=np.int32)  # see ``Clusterer.source_code``
        self.priority = np.zeros(0, dtype=np.int32)
        self.published_ts = np.zeros(0, dtype=np.float64)
        self.has_author = np.zeros(0, dtype=bool)
        self.dated = np.zeros(0, dtype=bool)
        self.word_count = np.zeros(0, dtype=np.int32)
        self.used = 0
        self.free: list[int] = []
        self.released: list[int] = []

    def _grow(self, capacity: int) -> None:
        for name in self.ARRAYS:
            enlarge(self, name, capacity)
        self.capacity = capacity

    def _widen(self, name: str, width: int) -> None:
        array = getattr(self, name)
        if width > array.shape[1]:
            wider = np.zeros((array.shape[0], width), dtype=array.dtype)
            wider[:, :array.shape[1]] = array
            setattr(self, name, wider)

    def reserve(self, count: int) -> None:
        """Make room for ``count`` more rows at once (a restart knows how many will come),
        and a quarter more for the articles that follow: rows never written cost no memory
        (fresh zeroed pages), where growing later would copy every array."""
        if self.used + count > self.capacity:
            self._grow(self.used + count + count // 4)

    def allocate(self, count: int = 1) -> np.ndarray:
        slots = [self.free.pop() for _ in range(min(count, len(self.free)))]
        needed = count - len(slots)
        if needed:
            if self.used + needed > self.capacity:
                # Grown by a quarter: doubling would leave up to half of a large window unused.
                self._grow(max(1024, self.capacity + self.capacity // 4, self.used + needed))
            slots.extend(range(self.used, self.used + needed))
            self.used += needed
        return np.asarray(slots, dtype=np.int64)

    def put(self, slots: np.ndarray, *, article_ids: list[int], story_ids: list[int],
            story_rows: list[int] | np.ndarray, shingles: np.ndarray, salients: np.ndarray,
            vector_ids: np.ndarray, vector_weights: np.ndarray, metadata: dict[str, list]) -> None:
        """Fill rows ``slots``; the term-id arrays come padded with zeros to one width;
        ``metadata``: a column of values for each name of ``METADATA``."""
        for name in self.METADATA:
            getattr(self, name)[slots] = metadata[name]
        if self.keep_stored:
            self.shingle[slots] = shingles
        else:
            self.shingle_bits[slots] = low_bits(shingles)
        self.salient[slots] = salient_bytes(salients)
        self._put_padded("vector_ids", slots, vector_ids)
        self._put_padded("vector_weights", slots, vector_weights)
        self.article_id[slots] = article_ids
        self.story_id[slots] = story_ids
        self.story_row[slots] = story_rows
        self.alive[slots] = True

    def put_one(self, slot: int, *, article_id: int, story_id: int, story_row: int,
                shingle: np.ndarray, salient: np.ndarray, vector_ids: list[int],
                vector_weights: list[float], source: int, priority: int, published_ts: float,
                has_author: bool, dated: bool, word_count: int,
                shingle_bits: np.ndarray | None = None) -> None:
        """``put`` for one row, each value of ``METADATA`` by its name: an article committed
        at a time, where ``put``'s one-row arrays took twice as long.  ``shingle_bits``:
        ``low_bits(shingle)``, if computed ahead for a batch (numpy's calls on one row cost
        a quarter of what the bits save the relations)."""
        self.source[slot] = source
        self.priority[slot] = priority
        self.published_ts[slot] = published_ts
        self.has_author[slot] = has_author
        self.dated[slot] = dated
        self.word_count[slot] = word_count
        if self.keep_stored:
            self.shingle[slot] = shingle
        else:
            self.shingle_bits[slot] = low_bits(shingle) if shingle_bits is None else shingle_bits
        salient_bytes(salient, out=self.salient[slot])
        for name, values in (("vector_ids", vector_ids), ("vector_weights", vector_weights)):
            self._widen(name, len(values))
            row = getattr(self, name)[slot]
            row[:len(values)] = values
            row[len(values):] = 0
        self.article_id[slot] = article_id
        self.story_id[slot] = story_id
        self.story_row[slot] = story_row
        self.alive[slot] = True

    def _put_padded(self, name: str, slots: np.ndarray, values: np.ndarray) -> None:
        self._widen(name, values.shape[1])
        target = getattr(self, name)
        target[slots] = 0
        target[slots, :values.shape[1]] = values

    def release(self, slots: list[int]) -> None:
        self.alive[slots] = False
        self.released.extend(slots)

    def recycle(self) -> None:
        """The indexes have dropped the released slots: they may be handed out again."""
        self.free.extend(self.released)
        self.released = []

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.ARRAYS)


@dataclass(frozen=True)
class Candidate:
    story_id: int
    score: float
    cosine: float
    time_factor: float
    threshold: float
    # The story's canonical when the candidate was scored (``explain`` shows the salient
    # terms they share).
    canonical_id: int | None = None
    # Why a story whose cosine x time factor reached its threshold was not joined (its
    # score is then 0, its cosine the one measured): HELD_BACK_UNSUPPORTED or
    # HELD_BACK_ONE_TERM.
    held_back: str | None = None

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


def capacity_cutoff(last_ts: np.ndarray, sizes: np.ndarray, max_articles: int,
                    cutoff_ts: float) -> float:
    """The eviction cutoff that leaves at most ``max_articles`` articles in the window.

    ``last_ts`` and ``sizes``: each story's newest member time and member count.  Stories
    whose newest member is older than the cutoff leave, so the newest stories stay: ``cutoff_ts``
    itself when what it keeps fits (or ``max_articles`` is 0, no limit), else a whole second
    just past the newest story that does not fit.  Whole seconds because the store keeps times
    to the second: a restart that reads the stories at or after the cutoff then finds exactly
    the stories that stayed.
    """
    if max_articles <= 0 or int(sizes[last_ts >= cutoff_ts].sum()) <= max_articles:
        return cutoff_ts
    order = np.argsort(-last_ts, kind="stable")
    kept = np.cumsum(sizes[order])
    first_left_out = int(np.searchsorted(kept, max_articles, side="right"))
    return max(cutoff_ts, math.floor(float(last_ts[order[first_left_out]])) + 1.0)


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
    ranked = tuple(sorted(candidates, key=best_first))
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
    return policy_key(policy, article.priority, article.word_count, article.published_ts,
                      article.has_author, article.article_id)


def policy_key(policy: tuple[str, ...], priority: int, word_count: int, published_ts: float,
               has_author: bool, article_id: int | None) -> tuple:
    """``canonical_key`` from the values themselves (the window holds them in arrays)."""
    parts: list[float] = []
    for criterion in policy:
        if criterion == "priority":
            parts.append(-priority)
        elif criterion == "completeness":
            parts.append(-_completeness_bucket(word_count))
        elif criterion == "earliest":
            parts.append(published_ts)
        elif criterion == "has_author":
            parts.append(0 if has_author else 1)
    parts.append(article_id or 0)
    return tuple(parts)


FIRST_VERSION = "first version of the story"


def canonical_reason(best: ClusterArticle, runner_up: ClusterArticle | None,
                     policy: tuple[str, ...]) -> str:
    """The first policy criterion on which the canonical beats the next-best version."""
    if runner_up is None:
        return FIRST_VERSION
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


def relation_from(is_canonical: bool, shingle_overlap: float, similarity: float,
                  settings: ClusteringSettings) -> tuple[Relation, float]:
    """A member's relation to the story's canonical, with the verified similarity."""
    if is_canonical:
        return "canonical", 1.0
    if shingle_overlap >= settings.duplicate_threshold:
        return "duplicate", round(shingle_overlap, 4)
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
    article_count: int = 1
    source_count: int = 1


class Clusterer:
    """The in-memory clustering index of the time window."""

    def __init__(self, settings: ClusteringSettings, stats: TermStatistics | None = None,
                 stored: StoredFingerprints | None = None):
        """With ``stored``, shingle signatures are read from the store when needed instead
        of being held in memory: only near-copy candidates and canonical changes need them."""
        # The window's arrays grow in place (``memory.enlarge``), which huge pages prevent.
        keep_large_arrays_movable()
        self.settings = settings
        self.stored = stored
        self.stats = stats or TermStatistics(settings.idf_prior_docs)
        self.vocabulary: Vocabulary = self.stats.vocabulary
        options = dict(storage_config=dict(settings.index_storage) or None)
        self.duplicate_index = make_index(settings.index_backend, settings.duplicate_threshold,
                                          settings.num_perm, prefix="duplicate", **options)
        self.candidate_index = make_index(settings.index_backend, settings.candidate_threshold,
                                          settings.num_perm, prefix="candidate", **options)
        # (bands, rows) of the near-copy index, by which its candidates are checked.
        self._duplicate_bands = lsh_parameters(settings.duplicate_threshold, settings.num_perm)
        self.rows = ArticleRows(settings.num_perm, settings.vector_terms,
                                keep_stored=stored is None)
        self.stories: dict[int, StoryState] = {}
        self.story_columns = StoryColumns()
        self._story_at: list[StoryState | None] = []  # by row of ``story_columns``
        # Articles in the window (the rows of live stories).
        self.window_size = 0
        # Stories whose newest member is older than this have been evicted to keep the window
        # within its article limit (``window_articles``); the store keeps it in ``meta``.
        self.floor_ts = -math.inf
        self._source_codes: dict[str, int] = {}
        self._dense = np.zeros(1024, dtype=np.float64)
        # Zero for every slot between calls of the compiled ranking, which counts in it.
        self._band_counts = np.zeros(0, dtype=np.uint16)
        self._length_tables_for: ClusteringSettings | None = None
        self._length_table_values: tuple[np.ndarray, np.ndarray, list] = (
            np.zeros(0), np.zeros(0), [])
        self._exact_tables: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

    # -- deciding ---------------------------------------------------------------------------

    def vector(self, article: ClusterArticle) -> tuple[list[int], list[float]]:
        """The article's vector, weighed with the statistics as they are now, once: the
        vocabulary ids of its terms and their unit-length weights, strongest first (scoring,
        the window's rows and the stored vector all take it so)."""
        if article.vector_ids is None:
            fingerprint = article.fingerprint
            positions, article.vector_weights = normalised_positions(
                fingerprint.weighted_terms, fingerprint.weights, self.settings.vector_terms)
            article.vector_ids = fingerprint.weighted_ids[positions].tolist()
        return article.vector_ids, article.vector_weights

    def _new_stories(self, story_ids: list[int]) -> list[StoryState]:
        rows = self.story_columns.allocate(len(story_ids))
        at, columns = self._story_at, self.story_columns
        if len(at) < columns.used:
            at.extend([None] * (columns.used - len(at)))
        made = []
        for story_id, row in zip(story_ids, rows, strict=True):
            story = self.stories[story_id] = at[row] = StoryState(story_id, columns, row)
            made.append(story)
        return made

    def _live(self, story_rows: np.ndarray, ts: float) -> np.ndarray:
        """Which of the stories of ``story_rows`` may still take an article of time ``ts``:
        the newest member is within the window, and the story began at most
        ``story_span_days`` earlier.  The second rule bounds the window: without it a story
        that keeps attracting articles keeps every member in memory, however old (in a long
        synthetic stream such stories held a third of the window after three weeks)."""
        columns = self.story_columns
        return ((ts - columns.last_ts[story_rows] <= self.settings.window_days * DAY_S)
                & (ts - columns.first_ts[story_rows] <= self.settings.story_span_days * DAY_S))

    def _candidate_slots(self, index, signature: np.ndarray, limit: int | None = None,
                         keys: np.ndarray | None = None) -> np.ndarray:
        """Live slots sharing a band key with ``signature``; with ``limit``, only that many
        of those sharing the most (the band index returns a slot once per shared key).
        ``keys``: the signature's band keys as ``band_keys`` gives them (one row), if known.

        Band keys are 32 bits, so now and then a slot is found by a key shared by chance:
        the callers drop it when they compare the slots with the signature (``near_copies``
        by whole bands, ``candidate_stories`` by the values they agree in).  Checking each
        of a query's hits here instead, against the band it was found by, took 0.1 ms a
        query at 100,000 articles (a row for each hit, most of them in no cache).
        """
        return self._candidate_slots_of(index.query(signature, None if keys is None
                                                    else keys[0]), limit)

    def _candidate_slots_of(self, found: np.ndarray, limit: int | None) -> np.ndarray:
        if found.size < 2:
            return found[self.rows.alive[found]] if found.size else found
        slots, bands = np.unique(found, return_counts=True)
        alive = self.rows.alive[slots]
        slots, bands = slots[alive], bands[alive]
        if limit is not None:
            slots = most_shared(slots, bands, limit, self.rows.article_id[slots])
        return slots

    def near_copies(self, article: ClusterArticle) -> list[NearCopy]:
        signature = article.fingerprint.shingle_signature
        if article.shingle_keys is None:
            article.shingle_keys = self.duplicate_index.band_keys(signature[None, :])
        slots = self._candidate_slots(self.duplicate_index, signature,
                                      keys=article.shingle_keys)
        if not slots.size:
            return []
        shingles = self._shingles(slots)
        overlaps = equal_values(shingles, signature) / len(signature)
        # Only the slots that hold a whole band of the signature: a 32-bit band key can
        # be shared by chance (the shingle signatures are read here anyway).
        live = self._live(self.rows.story_row[slots], article.published_ts) & share_a_band(
            shingles, signature, *self._duplicate_bands)
        slots, overlaps = slots[live], overlaps[live]
        return [NearCopy(article_id, story_id, round(overlap, 4))
                for article_id, story_id, overlap in zip(
                    self.rows.article_id[slots].tolist(), self.rows.story_id[slots].tolist(),
                    overlaps.tolist(), strict=True)]

    def _shingles(self, slots: np.ndarray, newcomer_slot: int = -1,
                  newcomer: np.ndarray | None = None) -> np.ndarray:
        """The shingle signatures of the rows ``slots``; ``newcomer``: the signature of the
        row ``newcomer_slot``, an article committed here before the store has its row."""
        if self.rows.keep_stored:
            return self.rows.shingle[slots]
        if newcomer is None:
            return self.stored.shingle_signatures(self.rows.article_id[slots].tolist())
        signatures = np.empty((len(slots), self.rows.num_perm), dtype=newcomer.dtype)
        is_newcomer = slots == newcomer_slot
        signatures[is_newcomer] = newcomer
        others = slots[~is_newcomer]
        if others.size:
            signatures[~is_newcomer] = self.stored.shingle_signatures(
                self.rows.article_id[others].tolist())
        return signatures

    def _similarities_of(self, ids, weights, slots: np.ndarray) -> np.ndarray:
        """Cosine of a unit-length vector given as term ids and weights (zero-padded or not)
        with the vectors of the article rows ``slots``."""
        return self._term_products(ids, weights, slots)[1]

    def _term_products(self, ids, weights, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What each term of the rows ``slots`` adds to their cosine with a vector given as
        term ids and weights: one row per slot, one column per term of the row's vector;
        and the cosines, the rows' sums (as ``sum(axis=1)`` adds them).

        Compiled (``kernels.term_products``) where the package was built with a C compiler;
        ``_term_products_numpy`` is the reference."""
        if len(self.vocabulary) > len(self._dense):
            self._dense = np.zeros(max(len(self.vocabulary), 2 * len(self._dense)))
        if kernels is None:
            return self._term_products_numpy(ids, weights, slots)
        rows = self.rows
        products = np.empty((len(slots), rows.vector_ids.shape[1]))
        cosines = np.empty(len(slots))
        kernels.term_products(self._dense, ids, weights, rows.vector_ids, rows.vector_weights,
                               np.asarray(slots, dtype=np.int64), products, cosines)
        return products, cosines

    def _term_products_numpy(self, ids, weights,
                             slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The vector is spread into a dense scratch array indexed by term id, so that one
        # gather-multiply covers every row at once.
        dense = self._dense
        dense[ids] = weights
        try:
            rows = self.rows
            # ``take`` gathers rows as indexing does, in half the time.
            products = (dense.take(rows.vector_ids.take(slots, axis=0))
                        * rows.vector_weights.take(slots, axis=0))
        finally:
            dense[ids] = 0.0
        return products, products.sum(axis=1)

    def closest_story_rows(self, found: np.ndarray, signature: np.ndarray) -> np.ndarray:
        """The story rows of the ``max_candidates`` stories closest to an article, closest
        first, from ``found``: the slots that the candidate index gave for its salient
        signature (``signature``, as the rows keep it: 16 bits a value).

        Of the live slots, the ``CANDIDATE_SLOTS`` sharing the most bands are compared in
        full (a common salient term can put a good part of a large window in the candidate
        set); stories are ranked by their closest member, so that the verification budget
        goes to the closest stories, not to the biggest.  Compiled where the package was
        built with a C compiler (``native.kernels``); ``_closest_story_rows_numpy`` is the
        same ranking in numpy, and the reference."""
        if kernels is None:
            return self._closest_story_rows_numpy(found, signature)
        rows = self.rows
        if len(self._band_counts) < len(rows.alive):
            self._band_counts = np.zeros(len(rows.alive), dtype=np.uint16)
        closest = np.empty(self.settings.max_candidates, dtype=np.int64)
        taken = kernels.closest_story_rows(
            found, rows.alive, rows.article_id, rows.story_row, rows.salient, signature,
            CANDIDATE_SLOTS, len(closest), self._band_counts, closest)
        return closest[:taken]

    def _closest_story_rows_numpy(self, found: np.ndarray, signature: np.ndarray) -> np.ndarray:
        slots = self._candidate_slots_of(found, CANDIDATE_SLOTS)
        if not slots.size:
            return np.zeros(0, dtype=np.int64)
        rows = self.rows
        # The count of equal values orders the slots as their Jaccard estimate does.
        agreeing = equal_values(salient_values(rows.salient.take(slots, axis=0)), signature)
        # A genuine slot holds a whole band, so agrees in at least one value; one found by
        # a band key shared by chance agrees in none (but once in 512, by its 16 bits).
        genuine = agreeing > 0
        if not genuine.all():
            slots, agreeing = slots[genuine], agreeing[genuine]
            if not slots.size:
                return np.zeros(0, dtype=np.int64)
        # Closest first; among equals the newest article first (one key: ids are below 2^52,
        # counts below 2^11).
        closeness = (agreeing.astype(np.int64) << 52) | rows.article_id[slots]
        return np.asarray(closest_stories(closeness, rows.story_row[slots],
                                          self.settings.max_candidates), dtype=np.int64)

    def candidate_stories(self, article: ClusterArticle) -> list[Candidate]:
        """The ``REPORTED_CANDIDATES`` best of the article's candidate stories, scored
        exactly, best first (largest margin over the threshold; then the lowest story id):
        only they can decide, and a decision keeps them for ``aggregator explain``."""
        signature = article.fingerprint.salient_signature
        if article.salient_keys is None:
            article.salient_keys = self.candidate_index.band_keys(signature[None, :])
        keys = article.salient_keys
        found = self.candidate_index.query(signature, None if keys is None else keys[0])
        ranked = self.closest_story_rows(found, signature.astype(np.uint16))
        if not ranked.size:
            return []
        if kernels is None:
            return self._best_candidates_numpy(article, ranked)
        return self._best_candidates(article, ranked)

    def _best_candidates(self, article: ClusterArticle, ranked: np.ndarray) -> list[Candidate]:
        """``candidate_stories`` from the ranked story rows, every live story scored
        exactly by ``_story_scores`` (compiled); ``_best_candidates_numpy`` is the
        reference."""
        stories = list(map(self._story_at.__getitem__, ranked.tolist()))
        # The best by their margins as computed, and those that rounding to four places
        # could still bring among the best: they are sorted by their rounded margins.
        scored = self._story_scores(article, ranked, stories,
                                    (REPORTED_CANDIDATES, MARGIN_ROUNDING))
        return best_candidates([self._rounded(stories[position], *values)
                                for position, values in scored])

    def _story_scores(self, article: ClusterArticle, ranked: np.ndarray,
                      stories: list[StoryState], best: tuple[int, float]) -> list[tuple]:
        """The compiled ``story_scores`` of the stories of the rows ``ranked`` (``stories``):
        for each live one among the ``best`` (count, slack), its position in ``ranked`` and
        the values ``_score`` gives, to the last bit."""
        columns, rows, settings = self.story_columns, self.rows, self.settings
        ids, weights = self.vector(article)
        if len(self.vocabulary) > len(self._dense):
            self._dense = np.zeros(max(len(self.vocabulary), 2 * len(self._dense)))
        positions = np.empty(len(stories), dtype=np.int64)
        values = np.empty((len(stories), 4))
        held_back = np.empty(len(stories), dtype=np.int8)
        kept = kernels.story_scores(
            self._dense, ids, weights, rows.vector_ids, rows.vector_weights, rows.word_count,
            [story.slots for story in stories], ranked,
            (columns.last_ts, columns.first_ts, columns.dated_first_ts, columns.dated_last_ts,
             columns.canonical_slot),
            self._exact_length_tables(),
            (article.published_ts, article.word_count, article.dated,
             settings.window_days * DAY_S, settings.story_span_days * DAY_S,
             settings.undated_time_factor, settings.member_anchor,
             settings.evidence_beyond_one_term),
            best, positions, values, held_back)
        return [(position, (*story_values, HELD_BACK[held]))
                for position, story_values, held in zip(
                    positions[:kept].tolist(), values[:kept].tolist(),
                    held_back[:kept].tolist(), strict=True)]

    def _best_candidates_numpy(self, article: ClusterArticle,
                               ranked: np.ndarray) -> list[Candidate]:
        live_rows = ranked[self._live(ranked, article.published_ts)]
        if not live_rows.size:
            return []
        live = list(map(self._story_at.__getitem__, live_rows.tolist()))
        # One join of the stories' slot arrays (machine integers, joined as bytes).
        member_slots = np.frombuffer(b"".join([story.slots for story in live]),
                                     dtype=np.int64)
        # Each member's cosine term by term: the sum is the cosine, the largest its
        # strongest shared term (_broad reads it for a story the article would join).
        products, cosines = self._term_products(*self.vector(article), member_slots)
        # Every live story is scored roughly in one numpy pass; the exact score (and the
        # member support) is then computed story by story in order of that rough margin,
        # until the best REPORTED_CANDIDATES are certain.
        sizes = self.story_columns.size[live_rows]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        rough = self._rough_margins(article, live_rows,
                                    np.add.reduceat(cosines, starts) / sizes)
        columns = self.story_columns
        candidates: list[Candidate] = []
        # Only the first few stories of this order are scored exactly: their values are
        # read one by one, not converted for all.
        for position in np.argsort(-rough, kind="stable").tolist():
            if len(candidates) >= REPORTED_CANDIDATES:
                fifth = sorted(c.margin for c in candidates)[-REPORTED_CANDIDATES]
                if rough[position] < fifth - ROUGH_TOLERANCE:
                    break
            row = int(live_rows[position])
            start, end = int(starts[position]), int(ends[position])
            candidates.append(self._candidate(
                article, live[position], cosines[start:end].tolist(), products[start:end],
                int(columns.canonical_slot[row]), float(columns.dated_first_ts[row]),
                float(columns.dated_last_ts[row])))
        return best_candidates(candidates)

    def _rough_margins(self, article: ClusterArticle, story_rows: np.ndarray,
                       means: np.ndarray) -> np.ndarray:
        """Score minus threshold of each story (of ``story_rows``), as ``_candidate`` computes
        it but with numpy arithmetic (equal to within rounding) and without the member
        support."""
        settings = self.settings
        columns = self.story_columns
        canonical_words = self.rows.word_count[columns.canonical_slot[story_rows]].astype(float)
        words = np.floor(np.sqrt(max(1, article.word_count) * np.maximum(1, canonical_words)))
        thresholds, sigmas, _ = self._length_tables()
        # Past the last entry the share of long text is 1, as at that entry.
        by_length = np.minimum(words, len(thresholds) - 1).astype(np.intp)
        threshold = thresholds[by_length]
        if not article.dated:
            return means * settings.undated_time_factor - threshold
        first = columns.dated_first_ts[story_rows]
        last = columns.dated_last_ts[story_rows]
        dated = np.flatnonzero(has_dated_span(first, last))
        factor = np.full(len(story_rows), settings.undated_time_factor)
        if dated.size:
            ts = article.published_ts
            first, last, sigma = first[dated], last[dated], sigmas[by_length[dated]]
            gap = np.maximum(0.0, np.maximum(first - ts, ts - last)) / DAY_S
            factor[dated] = np.exp(-(gap * gap) / (2.0 * sigma * sigma))
        return means * factor - threshold

    def _length_tables(self) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
        """The threshold and the time tolerance of each pair length in words, up to the
        first length whose share of long text is 1 (the last entry, which holds for every
        longer pair): as ``_rough_margins`` computes them (two arrays), and as
        ``same_story_threshold`` and ``time_sigma_days`` give them (a list of pairs).  They
        depend on the settings alone, so they are worked out once."""
        settings = self.settings
        if self._length_tables_for is not settings:
            low, high = settings.short_text_words, settings.long_text_words
            words = np.arange(max(low, high) + 2, dtype=float)
            if high > low:
                share = np.clip(np.log(np.maximum(words, low) / low) / math.log(high / low),
                                0, 1)
            else:
                share = np.zeros_like(words)
            exact = [(same_story_threshold(length, settings), time_sigma_days(length, settings))
                     for length in range(len(words))]
            self._length_table_values = (
                settings.same_story_threshold + share * (
                    settings.long_text_threshold - settings.same_story_threshold),
                settings.time_sigma_days + share * (
                    settings.long_text_time_sigma_days - settings.time_sigma_days),
                exact)
            self._exact_tables = (np.array([pair[0] for pair in exact]),
                                  np.array([pair[1] for pair in exact]))
            self._length_tables_for = settings
        return self._length_table_values

    def _exact_length_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """``_length_tables``' list of pairs as two arrays, for ``story_scores``."""
        self._length_tables()
        return self._exact_tables

    def _candidate(self, article: ClusterArticle, story: StoryState, own: list[float],
                   term_products: np.ndarray, canonical_slot: int,
                   dated_first_ts: float, dated_last_ts: float) -> Candidate:
        """The exact score of ``story``; ``own``: the cosines of its members,
        ``term_products``: the same term by term (``_term_products``), and the story's
        columns that it reads, taken for all candidates at once."""
        return self._rounded(story, *self._score(article, own, term_products, canonical_slot,
                                                 dated_first_ts, dated_last_ts))

    @staticmethod
    def _rounded(story: StoryState, similarity: float, factor: float, threshold: float,
                 score: float, held_back: str | None) -> Candidate:
        return Candidate(story.story_id, round(score, 4), round(similarity, 4),
                         round(factor, 4), round(threshold, 4), story.canonical_id, held_back)

    def _score(self, article: ClusterArticle, own: list[float], term_products: np.ndarray,
               canonical_slot: int, dated_first_ts: float,
               dated_last_ts: float) -> tuple[float, float, float, float, str | None]:
        """``_candidate``'s values before rounding: cosine, time factor, threshold, score
        and what held the story back (None: nothing)."""
        similarity = in_order_sum(own) / len(own)
        canonical_words = int(self.rows.word_count[canonical_slot])
        # The length of the pair: a short text beside a long one scores like neither.
        words = int(math.sqrt(max(1, article.word_count) * max(1, canonical_words)))
        by_length = self._length_tables()[2]
        threshold, sigma_days = by_length[min(words, len(by_length) - 1)]
        if article.dated and has_dated_span(dated_first_ts, dated_last_ts):
            factor = time_factor(article.published_ts, dated_first_ts, dated_last_ts,
                                 sigma_days)
        else:
            # A fetch time stands in for a missing date; it is no evidence that two
            # articles were written together, so it earns no "same moment" credit.
            factor = self.settings.undated_time_factor
        # Support and breadth are only worth checking for a story the article would
        # otherwise join.
        held_back = None
        if similarity * factor >= threshold:
            if not self._supported(own, threshold):
                held_back = HELD_BACK_UNSUPPORTED
            elif not self._broad(beyond_one_term(own, term_products), factor, threshold):
                held_back = HELD_BACK_ONE_TERM
        return (similarity, factor, threshold, 0.0 if held_back else similarity * factor,
                held_back)

    def _supported(self, member_similarities: list[float], threshold: float) -> bool:
        """Whether more than half of the story's (latest) members resemble the article.

        A member resembles it when their cosine reaches ``member_anchor`` x the threshold.
        The mean alone could be carried by one look-alike member; with this, an article that
        resembles only the member bridging two topics cannot join (no chaining).
        """
        latest = member_similarities[-MAX_SUPPORT_MEMBERS:]
        if len(latest) == 1:
            return True
        floor = self.settings.member_anchor * threshold
        support = sum(1 for similarity in latest if similarity >= floor)
        return support * 2 > len(latest)

    def _broad(self, beyond_one_term: list[float], factor: float, threshold: float) -> bool:
        """Whether the story's score rests on more than one term: its mean cosine without
        each member's strongest shared term, times the time factor, reaches
        ``evidence_beyond_one_term`` x the threshold.

        In a long text one strong term (a name) can carry the cosine over the long-text
        threshold on its own; in a large window every frequent name then gathers the
        stories that mention it into one.
        """
        required = self.settings.evidence_beyond_one_term * threshold
        return not required or (in_order_sum(beyond_one_term) / len(beyond_one_term) * factor
                                >= required)

    def propose(self, article: ClusterArticle) -> Decision:
        return decide(self.near_copies(article), self.candidate_stories(article),
                      self.settings)

    # -- committing -------------------------------------------------------------------------

    def commit(self, article: ClusterArticle, story_id: int) -> StoryOutcome:
        """Record an article as a member of ``story_id`` (new or existing).

        The store may not have the article's row yet: the outcome gives the relation that row
        is written with, so that it is written once, complete.
        """
        assert article.article_id is not None
        vector_ids, vector_weights = self.vector(article)
        story = self.stories.get(story_id)
        if story is None:
            [story] = self._new_stories([story_id])
        fingerprint = article.fingerprint
        slots = self.rows.allocate(1)
        slot = int(slots[0])
        self.rows.put_one(slot, article_id=article.article_id, story_id=story_id,
                          story_row=story.row, shingle=fingerprint.shingle_signature,
                          salient=fingerprint.salient_signature, vector_ids=vector_ids,
                          vector_weights=vector_weights,
                          source=self.source_code(article.source), priority=article.priority,
                          published_ts=article.published_ts, has_author=article.has_author,
                          dated=article.dated, word_count=article.word_count,
                          shingle_bits=article.shingle_bits)
        self._index_rows(slots, fingerprint.shingle_signature[None, :],
                         fingerprint.salient_signature[None, :], article.shingle_keys,
                         article.salient_keys)
        self.stats.add_document(fingerprint.term_ids, article.article_id)
        self._join(slot, article.published_ts, article.dated, story)
        return self._elect(story, slot, fingerprint.shingle_signature)

    def source_code(self, source: str) -> int:
        """A small integer for a source name: what the rows hold (only ever compared)."""
        code = self._source_codes.get(source)
        if code is None:
            code = self._source_codes[source] = len(self._source_codes)
        return code

    def member(self, slot: int) -> ClusterArticle:
        """The committed article of row ``slot``, as the canonical policy reads it (its
        source name is not kept, only a code)."""
        rows = self.rows
        return ClusterArticle(int(rows.article_id[slot]), "", int(rows.priority[slot]),
                              float(rows.published_ts[slot]), bool(rows.has_author[slot]),
                              None, dated=bool(rows.dated[slot]),
                              word_count=int(rows.word_count[slot]))

    def members(self, story_id: int) -> list[int]:
        """The article ids of a live story, in order of arrival."""
        return self.rows.article_id[np.frombuffer(self.stories[story_id].slots,
                                                  dtype=np.int64)].tolist()

    def memberships(self, article_ids: list[int]) -> tuple[dict[int, int], dict[int, list[int]]]:
        """For the articles of ``article_ids`` in the window: each one's story, and the
        members of those stories (what ``corrections.plan`` reads)."""
        rows = self.rows
        slots = np.flatnonzero(rows.alive[:rows.used]
                               & np.isin(rows.article_id[:rows.used], article_ids))
        story_of = dict(zip(rows.article_id[slots].tolist(), rows.story_id[slots].tolist(),
                            strict=True))
        return story_of, {story_id: self.members(story_id)
                          for story_id in set(story_of.values())}

    def regroup(self, moves: dict[int, int], losing: tuple[int, ...]) -> list[StoryOutcome]:
        """Move window articles to other stories (``moves``: article id -> story id, a new
        story where the id is not one of the window's), then elect the canonical of every
        story that lost or gained members among all its members again; a story left with
        no member leaves the window.  Returns the changed stories' outcomes, with every
        member's relation to its canonical; none for the stories left empty."""
        rows = self.rows
        slots = np.flatnonzero(rows.alive[:rows.used]
                               & np.isin(rows.article_id[:rows.used], list(moves)))
        targets = {story_id: self.stories.get(story_id) for story_id in set(moves.values())}
        made = [story_id for story_id, story in targets.items() if story is None]
        for story in self._new_stories(made):
            targets[story.story_id] = story
        touched = {story_id: self.stories[story_id] for story_id in losing}
        touched.update(targets)
        for slot, article_id in zip(slots.tolist(), rows.article_id[slots].tolist(),
                                    strict=True):
            story = targets[moves[article_id]]
            rows.story_id[slot] = story.story_id
            rows.story_row[slot] = story.row
        outcomes = []
        for story in touched.values():
            members = np.flatnonzero(rows.alive[:rows.used]
                                     & (rows.story_id[:rows.used] == story.story_id))
            if not members.size:
                self._drop_story(story)
                continue
            self._set_members(story, members)
            outcomes.append(self._elect_among_all(story))
        return outcomes

    def _drop_story(self, story: StoryState) -> None:
        del self.stories[story.story_id]
        self._story_at[story.row] = None
        self.story_columns.release([story.row])

    def _set_members(self, story: StoryState, slots: np.ndarray) -> None:
        """A story's members and the columns that follow from them, from its rows
        (``slots``, in order of arrival: the article ids' order)."""
        rows, columns, row = self.rows, self.story_columns, story.row
        slots = slots[np.argsort(rows.article_id[slots], kind="stable")]
        story.slots = array("q", slots.tolist())
        times = rows.published_ts[slots]
        dated = times[rows.dated[slots].astype(bool)]
        columns.size[row] = len(slots)
        columns.first_ts[row], columns.last_ts[row] = times.min(), times.max()
        columns.dated_first_ts[row] = dated.min() if dated.size else math.inf
        columns.dated_last_ts[row] = dated.max() if dated.size else -math.inf

    def _elect_among_all(self, story: StoryState) -> StoryOutcome:
        """``_elect`` for a story whose members changed other than by a newcomer: every
        member is ranked, and every member's relation given."""
        policy, rows = self.settings.canonical_policy, self.rows
        slots = np.frombuffer(story.slots, dtype=np.int64).copy()
        story.elected_under = None
        best_slot, runner_up_slot = self._best_two(story, -1, slots, policy)
        best_id = int(rows.article_id[best_slot])
        previous = story.canonical_id
        story.canonical_id, story.canonical_slot = best_id, best_slot
        story.elected_under = policy
        reason = None
        if previous != best_id:
            reason = FIRST_VERSION if runner_up_slot is None else canonical_reason(
                self.member(best_slot), self.member(runner_up_slot), policy)
        return StoryOutcome(
            story_id=story.story_id, canonical_id=best_id, previous_canonical_id=previous,
            canonical_reason=reason,
            member_relations=self._relations(best_slot, slots, -1, None),
            first_ts=story.first_ts, last_ts=story.last_ts, article_count=len(slots),
            source_count=len(set(rows.source[slots].tolist())))

    def terms_held(self) -> np.ndarray:
        """Which term numbers the window's vectors hold (by number: a term can only leave
        memory, and its number go to another, once no vector of the window holds it)."""
        rows = self.rows
        held = np.zeros(len(self.vocabulary), dtype=bool)
        # A block of rows at a time: the whole window's vectors at once would be a copy of
        # tens of megabytes.
        for start in range(0, rows.used, HELD_BLOCK_ROWS):
            end = min(start + HELD_BLOCK_ROWS, rows.used)
            held[rows.vector_ids[start:end][rows.alive[start:end]].ravel()] = True
        return held

    def window_article_ids(self) -> set[int]:
        """The ids of the articles in the window (``window_size`` of them)."""
        return set(self.rows.article_id[self.rows.alive].tolist())

    def _index_rows(self, slots: np.ndarray, shingles: np.ndarray, salients: np.ndarray,
                    shingle_keys: np.ndarray | None = None,
                    salient_keys: np.ndarray | None = None) -> None:
        """Put filled rows in both LSH indexes."""
        self.duplicate_index.insert(slots, shingles, shingle_keys)
        self.candidate_index.insert(slots, salients, salient_keys)

    def _join(self, slot: int, ts: float, dated: bool, story: StoryState) -> None:
        story.slots.append(slot)
        self.window_size += 1
        columns, row = self.story_columns, story.row
        columns.size[row] += 1
        if ts < columns.first_ts[row]:
            columns.first_ts[row] = ts
        if ts > columns.last_ts[row]:
            columns.last_ts[row] = ts
        if dated:
            if ts < columns.dated_first_ts[row]:
                columns.dated_first_ts[row] = ts
            if ts > columns.dated_last_ts[row]:
                columns.dated_last_ts[row] = ts

    def _elect(self, story: StoryState, newcomer_slot: int,
               newcomer_shingles: np.ndarray) -> StoryOutcome:
        policy = self.settings.canonical_policy
        rows = self.rows
        slots = np.frombuffer(story.slots, dtype=np.int64).copy()
        best_slot, runner_up_slot = self._best_two(story, newcomer_slot, slots, policy)
        best_id = int(rows.article_id[best_slot])
        previous = story.canonical_id
        changed = previous != best_id
        story.canonical_id, story.canonical_slot = best_id, best_slot
        story.elected_under = policy
        reason = None
        if changed:
            # A story's first version needs no comparison (half the stories are one article).
            reason = FIRST_VERSION if runner_up_slot is None else canonical_reason(
                self.member(best_slot), self.member(runner_up_slot), policy)
        # Relations are relative to the canonical: all change with it, else only the newcomer's.
        affected = slots if changed else np.asarray([newcomer_slot], dtype=np.int64)
        return StoryOutcome(
            story_id=story.story_id,
            canonical_id=best_id,
            previous_canonical_id=previous,
            canonical_reason=reason,
            member_relations=self._relations(best_slot, affected, newcomer_slot,
                                             newcomer_shingles),
            first_ts=story.first_ts,
            last_ts=story.last_ts,
            article_count=len(slots),
            source_count=len(set(rows.source[slots].tolist())),
        )

    def _best_two(self, story: StoryState, newcomer_slot: int, slots: np.ndarray,
                  policy: tuple[str, ...]) -> tuple[int, int | None]:
        """The best member under ``policy`` and the next best (None for a story of one).

        A member's key never changes in the window, so when the canonical was elected under
        this policy it is the best of the members before the newcomer: the best is the
        better of the two, and if that is the newcomer, the canonical comes next.  Only a
        story restored from the store, or after the policy changed, ranks every member.
        """
        if len(slots) == 1:
            return int(slots[0]), None
        if story.elected_under == policy:
            canonical_slot = story.canonical_slot
            if self._policy_key(newcomer_slot, policy) < self._policy_key(canonical_slot,
                                                                          policy):
                return newcomer_slot, canonical_slot
            return canonical_slot, None
        keys = self._policy_keys(slots, policy)
        ranked = sorted(range(len(keys)), key=keys.__getitem__)
        return int(slots[ranked[0]]), int(slots[ranked[1]]) if len(ranked) > 1 else None

    def _policy_key(self, slot: int, policy: tuple[str, ...]) -> tuple:
        """``policy_key`` of row ``slot``: its values read one by one, which for the two
        rows of an election takes 3.7 us against 9.6 for ``_policy_keys``'s array reads."""
        rows = self.rows
        return policy_key(policy, int(rows.priority[slot]), int(rows.word_count[slot]),
                          float(rows.published_ts[slot]), bool(rows.has_author[slot]),
                          int(rows.article_id[slot]))

    def _policy_keys(self, slots, policy: tuple[str, ...]) -> list[tuple]:
        """``policy_key`` of each row of ``slots``."""
        rows = self.rows
        return [policy_key(policy, *values) for values in zip(
            rows.priority[slots].tolist(), rows.word_count[slots].tolist(),
            rows.published_ts[slots].tolist(), rows.has_author[slots].tolist(),
            rows.article_id[slots].tolist(), strict=True)]

    def _relations(self, canonical_slot: int, slots: np.ndarray, newcomer_slot: int,
                   newcomer_shingles: np.ndarray) -> dict[int, tuple[Relation, float]]:
        rows = self.rows
        if len(slots) == 1 and slots[0] == canonical_slot:
            # A new story's only member: nothing to compare it with.
            return {int(rows.article_id[canonical_slot]): relation_from(
                True, 1.0, 1.0, self.settings)}
        overlaps = self._overlaps_with(canonical_slot, slots, newcomer_slot,
                                       newcomer_shingles)
        similarities = self._similarities_of(rows.vector_ids[canonical_slot],
                                             rows.vector_weights[canonical_slot],
                                             slots).tolist()
        return {article_id: relation_from(slot == canonical_slot, overlap, similarity,
                                          self.settings)
                for slot, article_id, overlap, similarity in zip(
                    slots.tolist(), rows.article_id[slots].tolist(), overlaps, similarities,
                    strict=True)}

    def _overlaps_with(self, canonical_slot: int, slots: np.ndarray, newcomer_slot: int,
                       newcomer_shingles: np.ndarray) -> list[float]:
        """The shingle overlap of each row of ``slots`` with the canonical's row, as far as a
        relation needs it: where the rows' low bits show that a member is not a duplicate
        (``most_equal_values``), 0.0, and neither signature is read from the store (the
        relation stores the similarity then, not the overlap).  Most members are different
        write-ups, whose signatures agree in no value."""
        rows = self.rows
        bits, num_perm = rows.shingle_bits, rows.num_perm
        if rows.keep_stored:
            compared = list(range(len(slots)))
        else:
            if len(slots) == 1:
                # The newcomer alone (the canonical kept), the usual case: the same bound
                # in integers, a tenth of the time of numpy's calls on one row.
                differing = (int.from_bytes(bits[slots[0]].tobytes(), "little")
                             ^ int.from_bytes(bits[canonical_slot].tobytes(), "little"))
                bounds = [num_perm - differing.bit_count()]
            else:
                bounds = most_equal_values(bits[slots], bits[canonical_slot],
                                           num_perm).tolist()
            threshold = self.settings.duplicate_threshold
            compared = [position for position, (slot, bound) in enumerate(
                            zip(slots.tolist(), bounds, strict=True))
                        if slot != canonical_slot and bound / num_perm >= threshold]
        overlaps = np.zeros(len(slots))
        if not compared:
            return overlaps.tolist()
        signatures = self._shingles(np.append(slots[compared], canonical_slot), newcomer_slot,
                                    newcomer_shingles)
        overlaps[compared] = equal_values(signatures[:-1], signatures[-1]) / num_perm
        return overlaps.tolist()

    def restore_rows(self, article_ids: list[int], story_ids: list[int],
                     canonical_ids: list[int], shingles: np.ndarray, salients: np.ndarray,
                     vector_ids: np.ndarray, vector_weights: np.ndarray, *,
                     sources: list[str], priorities: list[int], published_ts: list[float],
                     has_author: list[bool], dated: list[bool], word_counts: list[int]) -> None:
        """Put back stored articles at start-up, many at once, column by column (statistics
        come separately).  The vectors arrive as padded rows of term ids and weights."""
        if not article_ids:
            return
        code = self.source_code
        metadata = {"source": [code(source) for source in sources], "priority": priorities,
                    "published_ts": published_ts, "has_author": has_author, "dated": dated,
                    "word_count": word_counts}
        slots = self.rows.allocate(len(article_ids))
        stories = self.stories
        self._new_stories([story_id for story_id in dict.fromkeys(story_ids)
                           if story_id not in stories])
        members = list(map(stories.__getitem__, story_ids))
        for slot, story, canonical_id in zip(slots.tolist(), members, canonical_ids,
                                             strict=True):
            story.slots.append(slot)
            story.canonical_id = canonical_id
        story_rows = self._rows_of(members)
        self.rows.put(slots, article_ids=article_ids, story_ids=story_ids,
                      story_rows=story_rows, shingles=shingles, salients=salients,
                      vector_ids=vector_ids, vector_weights=vector_weights, metadata=metadata)
        self._index_rows(slots, shingles, salients)
        # What ``_join`` does member by member, for all of them.
        self.window_size += len(article_ids)
        columns = self.story_columns
        np.add.at(columns.size, story_rows, 1)
        times = np.asarray(published_ts, dtype=np.float64)
        np.minimum.at(columns.first_ts, story_rows, times)
        np.maximum.at(columns.last_ts, story_rows, times)
        is_dated = np.asarray(dated, dtype=bool)
        np.minimum.at(columns.dated_first_ts, story_rows[is_dated], times[is_dated])
        np.maximum.at(columns.dated_last_ts, story_rows[is_dated], times[is_dated])

    @staticmethod
    def _rows_of(stories: list[StoryState]) -> np.ndarray:
        return np.fromiter(map(_ROW, stories), dtype=np.int64, count=len(stories))

    def finish_restore(self) -> None:
        """After the last ``restore_rows``: each story finds its canonical's row, and the
        indexes take in what was loaded (now, so that a restart's time includes it rather
        than the first query's)."""
        rows = self.rows
        live = np.flatnonzero(rows.alive[:rows.used])
        order = np.argsort(rows.article_id[live])
        ids = rows.article_id[live][order]
        stories = list(self.stories.values())
        # A story stored without a canonical (None) matches no row.
        wanted = np.asarray([-1 if story.canonical_id is None else story.canonical_id
                             for story in stories], dtype=np.int64)
        at = np.minimum(np.searchsorted(ids, wanted), max(len(ids) - 1, 0))
        found = ids[at] == wanted
        # A canonical outside the window or missing (a store written by hand) gives way to
        # the first member until the next election.
        first_members = np.fromiter((story.slots[0] for story in stories), dtype=np.int64,
                                    count=len(stories))
        self.story_columns.canonical_slot[self._rows_of(stories)] = np.where(
            found, live[order[at]], first_members)
        for index in (self.duplicate_index, self.candidate_index):
            index.merge_runs()

    def newest_ts(self) -> float:
        """The time of the window's newest article (-inf for an empty window)."""
        rows = self.story_columns.live_rows()
        return float(self.story_columns.last_ts[rows].max()) if rows.size else -math.inf

    # Eviction reads the story columns, not the ``StoryState`` objects: three passes over
    # the 60,000 of a full window at each eviction cost 0.04 ms an article, eight times
    # what the columns cost.
    def capacity_cutoff(self, cutoff_ts: float, max_articles: int) -> float:
        """``capacity_cutoff`` over the stories of the window."""
        if max_articles <= 0 or self.window_size <= max_articles:
            return cutoff_ts
        story_rows = self.story_columns.live_rows()
        columns = self.story_columns
        return capacity_cutoff(columns.last_ts[story_rows], columns.size[story_rows],
                               max_articles, cutoff_ts)

    def evict_before(self, cutoff_ts: float) -> int:
        """Drop stories whose newest member is older than ``cutoff_ts``; returns how many."""
        story_rows = self.story_columns.live_rows()
        old_rows = story_rows[self.story_columns.last_ts[story_rows] < cutoff_ts].tolist()
        stale = list(map(self._story_at.__getitem__, old_rows))
        released: list[int] = []
        for story in stale:
            released.extend(story.slots)
            del self.stories[story.story_id]
            self._story_at[story.row] = None
        self.story_columns.release(old_rows)
        self.window_size -= len(released)
        if released:
            self.rows.release(released)
            slots = np.asarray(released, dtype=np.int64)
            self.duplicate_index.remove(slots)
            self.candidate_index.remove(slots)
            self._compact_when_worth_it()
        return len(stale)

    def _compact_when_worth_it(self) -> None:
        """Purge released slots from the indexes once they are ``COMPACT_AT_DEAD_SHARE``
        of the window."""
        if len(self.rows.released) < max(COMPACT_AT_DEAD_MIN,
                                         COMPACT_AT_DEAD_SHARE * self.window_size):
            return
        for index in (self.duplicate_index, self.candidate_index):
            index.compact(self.rows.alive)
        self.rows.recycle()

    def index_bytes(self) -> int:
        """Bytes held by the window's arrays and the LSH indexes (not Python objects)."""
        return (self.rows.nbytes() + self.story_columns.nbytes()
                + self.duplicate_index.nbytes() + self.candidate_index.nbytes())


def window_start(newest: datetime | None, floor: datetime | None, window_days: float,
                 now: datetime | None = None) -> datetime | None:
    """The oldest newest-member time of a story in the window: ``window_days`` before the
    newest stored article (``window_newest``), or the stored ``floor`` where the article
    limit has cut the window short; None for an empty store."""
    if newest is None:
        return None
    since = datetime.fromtimestamp(window_newest(newest.timestamp(), now), UTC) \
        - timedelta(days=window_days)
    return since if floor is None else max(since, floor)


def window_newest(newest_ts: float, now: datetime | None = None) -> float:
    """The time the window runs back from: its newest article's, as a store filled from
    dated archives has its live stories there, but never further ahead of the clock
    (``now``, by default the system clock's) than an entry's date may be of its fetch.  An
    article newer than that was stamped by a clock that was ahead, since set right: the
    window would run back from a time to come, and leave every story of the present (a year
    ahead: none would be clustered for a year)."""
    now_ts = (now or datetime.now(UTC)).timestamp()
    return min(newest_ts, now_ts + PUBLISHED_AHEAD_ALLOWED.total_seconds())
