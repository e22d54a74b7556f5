"""``aggregator check``: the invariants the store must satisfy at every committed instant.

Each check is a query or a recomputation over stored data; a violation names the rows.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from .config import ClusteringSettings
from .fingerprint import Signer, shingles
from .readers import PURGED_DOCUMENTS, purged_totals
from .store import Store

MAX_REPORTED = 20


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str


def _query_violations(store: Store, invariant: str, sql: str, describe) -> list[Violation]:
    return [Violation(invariant, describe(row))
            for row in store.db.execute(sql).fetchmany(MAX_REPORTED)]


def check_store(store: Store, settings: ClusteringSettings,
                signatures: bool = True) -> list[Violation]:
    """Every violated invariant, at most ``MAX_REPORTED`` rows each."""
    violations: list[Violation] = []
    q = violations.extend
    q(_query_violations(
        store, "every article belongs to exactly one story",
        "SELECT a.id, a.story_id FROM articles a LEFT JOIN stories s ON s.id = a.story_id "
        "WHERE s.id IS NULL",
        lambda r: f"article {r[0]} has story {r[1]}, which does not exist"))
    q(_query_violations(
        store, "every webhook delivery is of a story in the store",
        "SELECT d.webhook, d.story_id FROM webhook_deliveries d LEFT JOIN stories s "
        "ON s.id = d.story_id WHERE s.id IS NULL",
        lambda r: f"webhook {r[0]!r}: a delivery of story {r[1]}, which does not exist"))
    q(_query_violations(
        store, "every reader's mark is of a stored article and marks something",
        "SELECT m.article_id, a.id IS NULL FROM article_marks m LEFT JOIN articles a "
        "ON a.id = m.article_id WHERE a.id IS NULL OR (m.read_at IS NULL "
        "AND m.saved_at IS NULL)",
        lambda r: f"mark of article {r[0]}: " + ("the article does not exist" if r[1]
                                                  else "neither read nor saved")))
    q(_query_violations(
        store, "every story has a canonical that is one of its members",
        "SELECT s.id, s.canonical_article_id FROM stories s LEFT JOIN articles a "
        "ON a.id = s.canonical_article_id WHERE a.id IS NULL OR a.story_id IS NOT s.id",
        lambda r: f"story {r[0]}: canonical {r[1]} is not one of its members"))
    q(_query_violations(
        store, "every story has exactly one canonical",
        "SELECT story_id, sum(relation = 'canonical') AS n FROM articles "
        "GROUP BY story_id HAVING n != 1",
        lambda r: f"story {r[0]} has {r[1]} members marked canonical"))
    q(_query_violations(
        store, "the member marked canonical is the story's canonical",
        "SELECT a.id, a.story_id FROM articles a JOIN stories s ON s.id = a.story_id "
        "WHERE (a.relation = 'canonical') != (s.canonical_article_id = a.id)",
        lambda r: f"article {r[0]} in story {r[1]}: relation and canonical disagree"))
    q(_query_violations(
        store, "a story's title is its canonical's",
        "SELECT s.id, s.title, a.title FROM stories s JOIN articles a "
        "ON a.id = s.canonical_article_id WHERE s.title IS NOT a.title",
        lambda r: f"story {r[0]} has title {r[1]!r}, its canonical {r[2]!r}"))
    q(_query_violations(
        store, "stored counts equal real counts",
        "SELECT s.id, s.article_count, count(a.id), s.source_count, "
        "count(DISTINCT a.source_id) FROM stories s LEFT JOIN articles a ON a.story_id = s.id "
        "GROUP BY s.id HAVING s.article_count != count(a.id) "
        "OR s.source_count != count(DISTINCT a.source_id)",
        lambda r: f"story {r[0]}: stored {r[1]} articles/{r[3]} sources, real {r[2]}/{r[4]}"))
    q(_query_violations(
        store, "stored counts equal real counts",
        "SELECT s.id, s.read_versions, count(m.article_id) FROM stories s "
        "LEFT JOIN articles a ON a.story_id = s.id LEFT JOIN article_marks m "
        "ON m.article_id = a.id AND m.read_at IS NOT NULL GROUP BY s.id "
        "HAVING s.read_versions != count(m.article_id)",
        lambda r: f"story {r[0]}: stored {r[1]} versions read, real {r[2]}"))
    q(_query_violations(
        store, "no two articles share an identity key",
        "SELECT a.id, a.identity_key, k.article_id FROM articles a LEFT JOIN article_keys k "
        "ON k.key = a.identity_key WHERE k.article_id IS NOT a.id",
        lambda r: f"article {r[0]}: its key {r[1]!r} belongs to article {r[2]}"))
    q(_query_violations(
        store, "no two articles share an identity key",
        "SELECT k.key, k.article_id FROM article_keys k LEFT JOIN articles a "
        "ON a.id = k.article_id WHERE a.id IS NULL",
        lambda r: f"key {r[0]!r} points at missing article {r[1]}"))
    q(_query_violations(
        store, "no two articles share an identity key",
        "SELECT k.key, k.article_id FROM article_keys k JOIN retired_keys r ON r.key = k.key",
        lambda r: f"key {r[0]!r} of article {r[1]} is also the key of a deleted article"))
    q(_query_violations(
        store, "every fetch attempt stored is counted",
        # Retention deletes old attempts, and the counts keep them: at least, not equal.
        "SELECT f.outcome, count(*), coalesce(c.attempts, 0) FROM fetch_attempts f "
        "LEFT JOIN fetch_counts c ON c.outcome = f.outcome GROUP BY f.outcome "
        "HAVING count(*) > coalesce(c.attempts, 0)",
        lambda r: f"outcome {r[0]!r}: {r[1]} attempts stored, {r[2]} counted"))
    q(_query_violations(
        store, "stored counts equal real counts",
        "SELECT s.name, s.article_count, count(a.id), s.duplicate_count, "
        "sum(a.relation IS 'duplicate') AS duplicates, s.same_story_count, "
        "sum(a.relation IS 'same_story') AS same_story FROM sources s LEFT JOIN articles a "
        "ON a.source_id = s.id GROUP BY s.id HAVING s.article_count != count(a.id) "
        "OR s.duplicate_count != duplicates OR s.same_story_count != same_story",
        lambda r: f"source {r[0]!r}: stored {r[1]} articles, {r[3]} duplicates, {r[5]} "
                  f"other write-ups; real {r[2]}, {r[4]}, {r[6]}"))
    q(_query_violations(
        store, "stored counts equal real counts",
        # The articles and the counts side by side, by day and source.
        "SELECT day, source_id, sum(real_articles), sum(real_canonical), "
        "sum(real_duplicates), sum(real_same_story), sum(articles), sum(canonical), "
        "sum(duplicates), sum(same_story) FROM ("
        "SELECT substr(fetched, 1, 10) AS day, source_id, 1 AS real_articles, "
        "relation IS 'canonical' AS real_canonical, relation IS 'duplicate' AS real_duplicates, "
        "relation IS 'same_story' AS real_same_story, 0 AS articles, 0 AS canonical, "
        "0 AS duplicates, 0 AS same_story FROM articles UNION ALL "
        "SELECT day, source_id, 0, 0, 0, 0, articles, canonical, duplicates, same_story "
        "FROM ingest_counts) GROUP BY day, source_id "
        "HAVING sum(real_articles) != sum(articles) OR sum(real_canonical) != sum(canonical) "
        "OR sum(real_duplicates) != sum(duplicates) OR sum(real_same_story) != sum(same_story)",
        lambda r: f"day {r[0]} of source {r[1]}: stored {r[6]} articles ({r[7]} canonical, "
                  f"{r[8]} duplicates, {r[9]} other write-ups), real {r[2]} ({r[3]}, {r[4]}, "
                  f"{r[5]})"))
    q(_query_violations(
        store, "stored counts equal real counts",
        "SELECT day, source_id, sum(real_fetches), sum(real_ok), sum(real_not_modified), "
        "sum(real_new), sum(real_ms), sum(fetches), sum(ok), sum(not_modified), sum(new), "
        "sum(ms) FROM ("
        "SELECT substr(started_at, 1, 10) AS day, source_id, 1 AS real_fetches, "
        "outcome IS 'ok' AS real_ok, outcome IS 'not_modified' AS real_not_modified, "
        "coalesce(new_articles, 0) AS real_new, duration_ms AS real_ms, 0 AS fetches, 0 AS ok, "
        "0 AS not_modified, 0 AS new, 0 AS ms FROM fetch_attempts UNION ALL "
        "SELECT day, source_id, 0, 0, 0, 0, 0, fetches, ok, not_modified, new_articles, "
        "duration_ms FROM fetch_days) GROUP BY day, source_id "
        "HAVING sum(real_fetches) != sum(fetches) OR sum(real_ok) != sum(ok) "
        "OR sum(real_not_modified) != sum(not_modified) OR sum(real_new) != sum(new) "
        "OR sum(real_ms) != sum(ms)",
        lambda r: f"fetches on {r[0]} of source {r[1]}: stored {r[7]} ({r[8]} ok, {r[9]} not "
                  f"modified, {r[10]} new articles, {r[11]} ms), real {r[2]} ({r[3]}, {r[4]}, "
                  f"{r[5]}, {r[6]})"))
    q(_query_violations(
        store, "every article has its fingerprint",
        # ... except one stored with clustering off: alone in its story, counted nowhere.
        "SELECT a.id FROM articles a LEFT JOIN article_fingerprints f ON f.article_id = a.id "
        "LEFT JOIN stories s ON s.id = a.story_id "
        "WHERE f.article_id IS NULL AND (a.counted_terms != '' OR s.article_count IS NOT 1)",
        lambda r: f"article {r[0]} has no row in article_fingerprints, yet it shares a story "
                  "or counts in the statistics"))
    q(_query_violations(
        store, "every article has its fingerprint",
        "SELECT a.id FROM articles a JOIN article_fingerprints f ON f.article_id = a.id "
        "WHERE f.source_id != a.source_id OR f.published != a.published "
        "OR f.word_count != a.word_count OR f.dated != a.published_from_feed "
        "OR f.has_author != (a.author IS NOT NULL)",
        lambda r: f"article {r[0]}: its fingerprint row disagrees with the article"))
    q(_query_violations(
        store, "the full-text index holds every article and nothing else",
        "SELECT a.id FROM articles a LEFT JOIN articles_fts_docsize d ON d.id = a.id "
        "WHERE d.id IS NULL",
        lambda r: f"article {r[0]} is not in the full-text index (articles_fts)"))
    q(_query_violations(
        store, "the full-text index holds every article and nothing else",
        "SELECT d.id FROM articles_fts_docsize d LEFT JOIN articles a ON a.id = d.id "
        "WHERE a.id IS NULL",
        lambda r: f"the full-text index (articles_fts) holds missing article {r[0]}"))
    violations.extend(_check_statistics(store))
    if signatures:
        violations.extend(_check_signatures(store, settings))
    return violations


def _check_statistics(store: Store) -> list[Violation]:
    """The statistics count every article placed, those that retention deleted since
    (``Store.purge_stories``) included: their share is recorded apart and added back."""
    documents = int(store.db.execute(
        "SELECT value FROM meta WHERE key = 'documents'").fetchone()[0])
    real: Counter[str] = Counter()
    articles = purged_totals(store.db.conn).get(PURGED_DOCUMENTS, 0)
    for (terms,) in store.db.execute("SELECT a.counted_terms FROM articles a JOIN "
                                     "article_fingerprints f ON f.article_id = a.id"):
        real.update(terms.split())
        articles += 1
    found = []
    if documents != articles:
        found.append(Violation("the index statistics agree with the store",
                               f"meta says {documents} documents, the store has {articles} "
                               "(deleted ones included)"))
    stored = {}
    for term, frequency, purged in store.db.execute(
            "SELECT term, document_frequency, purged_frequency FROM term_stats"):
        if frequency:
            stored[term] = frequency
        if purged:
            real[term] += purged
    wrong = [t for t in set(stored) | set(real) if stored.get(t, 0) != real.get(t, 0)]
    for term in sorted(wrong)[:MAX_REPORTED]:
        found.append(Violation("the index statistics agree with the store",
                               f"term {term!r}: document frequency {stored.get(term, 0)}, "
                               f"real {real.get(term, 0)}"))
    return found


def _check_signatures(store: Store, settings: ClusteringSettings) -> list[Violation]:
    signer = Signer(settings.num_perm)
    found = []
    rows = store.db.execute("SELECT a.id, a.title, a.text, f.salient_terms, "
                            "f.shingle_signature, f.salient_signature FROM articles a "
                            "JOIN article_fingerprints f ON f.article_id = a.id")
    for article_id, title, text, salient, shingle_sig, salient_sig in rows:
        shingle_now, salient_now = signer.sign([
            shingles(f"{title}\n{text}", settings.shingle_size),
            [term.encode() for term in json.loads(salient)]])
        if signer.to_bytes(shingle_now) != shingle_sig or \
                signer.to_bytes(salient_now) != salient_sig:
            found.append(Violation("every stored signature matches its article",
                                   f"article {article_id}: signature differs from its text"))
            if len(found) >= MAX_REPORTED:
                break
    return found
