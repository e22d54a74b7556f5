"""A seeded synthetic news stream for the ingest and query benchmarks.

Articles come in stories: each story has its own topic words and invented proper names, and
one to several outlets write it up in their own words (the topic words mixed into ordinary
English at different rates), some of them syndicated near-copies of another outlet's text.
Text lengths are log-normal around 350 words, like feed summaries and full texts together.
The vocabulary keeps growing, as a real stream's does: a story's names are drawn from an
endless list by a Zipf law (exponent ``NAME_ZIPF``), so a few names come back again and
again and new ones keep coming (about 55,000 distinct terms at 100,000 articles, 113,000 at
300,000, 290,000 at a million).

Time advances so that ``per_day`` articles arrive a day: at 14,000 a day a 7-day window holds
about 100,000 articles.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import wordfreq
from wordfreq import top_n_list

from aggregator.parse import ParsedEntry

SYLLABLES = ("ka", "lo", "mi", "ren", "tor", "va", "shi", "ban", "dre", "qu", "zel", "fo",
             "ga", "nik", "sa", "rus", "tel", "ov", "ia", "mar")
# The Zipf exponent of names: 1.15 gives about 37,000 distinct names in the first 100,000
# articles and 277,000 in a million (a name list of 8,400 before, which a stream had used
# up after its first 100,000 articles, so that memory and restarts stopped growing with it).
NAME_ZIPF = 1.15
# The name of rank r is r + NAME_OFFSET written in base len(SYLLABLES) with syllables as
# digits: two syllables at least, and never more than seven.
NAME_OFFSET = len(SYLLABLES) ** 2
NAME_RANKS = len(SYLLABLES) ** 7 - NAME_OFFSET


@dataclass(frozen=True)
class StreamArticle:
    source: str
    story: int
    entry: ParsedEntry


class SyntheticStream:
    def __init__(self, seed: int = 7, per_day: int = 14_000, sources: int = 200,
                 start: datetime = datetime(2026, 1, 1, tzinfo=UTC)):
        self.rng = np.random.default_rng(seed)
        self.words = [w for w in top_n_list("en", 30_000) if w.isalpha()]
        # wordfreq keeps its whole frequency table cached (about 20 MB): the benchmarks
        # measure the daemon's memory, not the generator's.
        for cached in (top_n_list, wordfreq.get_frequency_list, wordfreq.get_frequency_dict):
            cached.cache_clear()
        ranks = np.arange(1, len(self.words) + 1)
        weights = 1.0 / ranks
        self.common_cdf = np.cumsum(weights / weights.sum())
        self.sources = [f"outlet-{i:03d}" for i in range(sources)]
        self.step = timedelta(days=1) / per_day
        self.clock = start
        self.story = 0
        self.serial = 0

    def _name(self) -> str:
        number = int(self.rng.zipf(NAME_ZIPF)) % NAME_RANKS + NAME_OFFSET
        parts = []
        while number:
            number, digit = divmod(number, len(SYLLABLES))
            parts.append(SYLLABLES[digit])
        return "".join(parts).capitalize()

    def _text(self, topic: list[str], words: int, topic_share: float) -> str:
        common = np.minimum(np.searchsorted(self.common_cdf, self.rng.random(words)),
                            len(self.words) - 1)
        use_topic = self.rng.random(words) < topic_share
        picks = self.rng.integers(0, len(topic), size=words)
        tokens = [topic[p] if t else self.words[c]
                  for c, t, p in zip(common.tolist(), use_topic.tolist(), picks.tolist(),
                                     strict=True)]
        sentences = [" ".join(tokens[i:i + 18]) for i in range(0, len(tokens), 18)]
        return ". ".join(s.capitalize() for s in sentences) + "."

    def __iter__(self) -> Iterator[StreamArticle]:
        # Write-ups of one story arrive over hours, interleaved with other stories.
        pending: list[tuple[datetime, int, StreamArticle]] = []
        while True:
            for article in self._story():
                heapq.heappush(pending, (article.entry.published, article.entry.guid, article))
            while pending and pending[0][0] <= self.clock:
                yield heapq.heappop(pending)[2]

    def _story(self) -> list[StreamArticle]:
        self.story += 1
        names = [self._name() for _ in range(int(self.rng.integers(2, 5)))]
        topic = names + [self.words[i] for i in self.rng.integers(300, 12_000, size=10)]
        write_ups = int(min(8, self.rng.geometric(0.45)))
        outlets = self.rng.choice(len(self.sources), size=write_ups, replace=False)
        articles: list[StreamArticle] = []
        texts: list[str] = []
        self.clock += self.step * write_ups
        for position, outlet in enumerate(outlets.tolist()):
            delay = timedelta(hours=float(self.rng.exponential(3.0))) if position else timedelta()
            words = int(min(2000, max(30, self.rng.lognormal(math.log(350), 0.6))))
            if texts and self.rng.random() < 0.2:
                # Syndicated: another outlet's text with a few words changed.
                tokens = texts[int(self.rng.integers(0, len(texts)))].split()
                for i in self.rng.integers(0, len(tokens), size=max(1, len(tokens) // 40)):
                    tokens[i] = self.words[int(self.rng.integers(0, 5000))]
                text = " ".join(tokens)
            else:
                text = self._text(topic, words, float(self.rng.uniform(0.08, 0.2)))
            texts.append(text)
            title = self._text(topic, int(self.rng.integers(7, 13)), 0.5).rstrip(".")
            self.serial += 1
            entry = ParsedEntry(guid=f"urn:synthetic:{self.serial}",
                                link=f"https://{self.sources[outlet]}.example/a/{self.serial}",
                                title=title, author=None if self.serial % 3 else "Staff",
                                published=self.clock + delay, content=text)
            articles.append(StreamArticle(self.sources[outlet], self.story, entry))
        return articles
