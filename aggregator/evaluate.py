"""Measuring story clustering on labelled JSONL: the daemon's own code, a temporary store.

One article a line: ``id, cluster, title, text, source, published, url``.  Articles are
streamed in order of ``published`` (those without a date keep file order and count as
fetched when the run starts), one at a time, through normalize -> fingerprint -> cluster ->
store, exactly as the daemon ingests entries.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .config import ClusteringSettings, Config, Source
from .errors import AggregatorError
from .parse import ParsedEntry, text_as_html
from .pipeline import Aggregator
from .store import Store, utcnow


@dataclass(frozen=True)
class LabelledArticle:
    id: str
    cluster: str
    title: str
    text: str
    source: str
    published: datetime | None
    url: str | None


@dataclass(frozen=True)
class Scores:
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f1: float
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f1: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def score_clustering(gold: dict[str, str], predicted: dict[str, object]) -> Scores:
    """B-cubed (per article, averaged) and pairwise precision, recall and F1."""
    items = list(gold)
    gold_members: dict[str, set[str]] = defaultdict(set)
    pred_members: dict[object, set[str]] = defaultdict(set)
    for item in items:
        gold_members[gold[item]].add(item)
        pred_members[predicted[item]].add(item)
    precision = recall = 0.0
    for item in items:
        same_gold = gold_members[gold[item]]
        same_pred = pred_members[predicted[item]]
        both = len(same_gold & same_pred)
        precision += both / len(same_pred)
        recall += both / len(same_gold)
    n = len(items) or 1
    bp, br = precision / n, recall / n

    def pairs(sizes: Iterable[int]) -> int:
        return sum(s * (s - 1) // 2 for s in sizes)

    joint = Counter((gold[i], predicted[i]) for i in items)
    true_pairs = pairs(joint.values())
    pred_pairs = pairs(len(m) for m in pred_members.values())
    gold_pairs = pairs(len(m) for m in gold_members.values())
    pp = true_pairs / pred_pairs if pred_pairs else 1.0
    pr = true_pairs / gold_pairs if gold_pairs else 1.0
    return Scores(bp, br, _f1(bp, br), pp, pr, _f1(pp, pr))


def read_labelled(path: str | Path) -> list[LabelledArticle]:
    """Read a labelled file; a bad line is an error naming the file and the line."""
    articles = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                published = row.get("published")
                articles.append(LabelledArticle(
                    id=str(row["id"]), cluster=str(row["cluster"]),
                    title=row.get("title") or "", text=row.get("text") or "",
                    source=row.get("source") or "unknown",
                    published=datetime.fromisoformat(published.replace("Z", "+00:00"))
                    if published else None,
                    url=row.get("url")))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise AggregatorError(f"{path}:{number}: not a labelled article "
                                      f"({type(exc).__name__}: {exc})") from None
    return articles


def stream_order(articles: list[LabelledArticle], clock: datetime) -> list[LabelledArticle]:
    return sorted(articles, key=lambda a: a.published or clock)


@dataclass(frozen=True)
class EvalResult:
    file: str
    articles: int
    stories_gold: int
    stories_found: int
    scores: Scores
    seconds: float
    assignments: dict[str, int]


def evaluate_file(path: str | Path, settings: ClusteringSettings | None = None,
                  database: str | None = None,
                  progress: Callable[[int], None] | None = None) -> EvalResult:
    settings = settings or ClusteringSettings()
    articles = read_labelled(path)
    clock = utcnow()
    ordered = stream_order(articles, clock)
    sources = sorted({a.source for a in articles})
    with tempfile.TemporaryDirectory(prefix="aggregator-eval-") as scratch:
        db_path = database or str(Path(scratch) / "eval.db")
        config = Config(path=str(path), database=db_path, clustering=settings,
                        sources=tuple(Source(name=s, url=str(path), interval_s=3600)
                                      for s in sources))
        aggregator = Aggregator(config, Store(db_path))
        started = time.perf_counter()
        article_ids: dict[str, int] = {}
        for done, item in enumerate(ordered, 1):
            entry = ParsedEntry(guid=f"eval:{item.id}", link=item.url, title=item.title,
                                published=item.published, content=text_as_html(item.text))
            report = aggregator.ingest_entries(item.source, 0, [entry], clock)
            if report.decisions:
                article_ids[item.id] = report.decisions[0][0]
            if progress:
                progress(done)
        seconds = time.perf_counter() - started
        story_of = dict(aggregator.store.db.execute("SELECT id, story_id FROM articles"))
        aggregator.close()
    # An article the pipeline dropped as a repeat of another stays alone.
    assignments = {a.id: story_of[article_ids[a.id]] if a.id in article_ids else f"alone:{a.id}"
                   for a in articles}
    gold = {a.id: a.cluster for a in articles}
    return EvalResult(str(path), len(articles), len(set(gold.values())),
                      len(set(assignments.values())), score_clustering(gold, assignments),
                      seconds, assignments)

