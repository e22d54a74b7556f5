"""Posting stories to webhooks: one POST a story, once enough sources report it.

A feed reader's webhook fires for every new entry, twenty times for a story that twenty
outlets carry.  Here each configured webhook (``[[webhooks]]``: a name, a URL, optional
``min_sources``, ``tags`` and ``headers``) gets each story once, as soon as ``min_sources``
sources or more report it, with every version known by then.  After each pass the daemon
reads the stories updated since the webhook's cursor, posts the ones not yet delivered, in
the order they were updated, and records each outcome in ``webhook_deliveries``; so a
restart posts nothing twice.

A receiver that is down, slow or refusing (a 5xx, a 429, a 401, a timeout) is tried again
after a delay that doubles with each failure in a row (``retry_delay``); its stories wait
in order, and nothing else waits for it.  A payload the receiver rejects itself (400, 413,
415, 422: ``fetch.classify_delivery``) is recorded as rejected and not sent again.  A new
webhook posts only the stories updated after the daemon first saw it, not the store's past.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from .config import Config, Webhook
from .fetch import Delivery, classify_delivery
from .readers import select_in
from .schedule import set_back_since
from .store import from_iso, to_iso

log = logging.getLogger(__name__)

RETRY_BASE_S = 60.0
RETRY_MAX_S = 6 * 3600.0
# Stories posted to one webhook in one pass at most; the rest go at the next pass.
STORIES_A_PASS = 100
DELIVERY_BUDGET_S = 10.0
DELIVERY_TIMEOUT_S = 10.0
# Stories updated this long before the cursor are looked at again: a story written late in
# a pass can carry a fetch time a little earlier than one written before it.
CURSOR_OVERLAP = timedelta(hours=1)


def marks_as_of_now(since: str, cursor: str, now: datetime) -> tuple[str, str]:
    """A webhook's (since, cursor) as of ``now``: where one is more than
    ``CLOCK_SET_BACK_S`` ahead of ``now``, the system clock has been set back since it was
    stamped, and the stories updated since carry earlier times: they would be passed over
    until the clock caught up.  Then ``now`` (from which ``CURSOR_OVERLAP`` still looks
    back), stored so."""
    def as_of_now(stamp: str) -> str:
        return to_iso(now) if set_back_since(from_iso(stamp), now) else stamp

    return as_of_now(since), as_of_now(cursor)


def retry_delay(failures: int) -> float:
    """Seconds before a webhook that failed ``failures`` times in a row is tried again."""
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, failures - 1))


def _meta_key(kind: str, webhook: str) -> str:
    return f"webhook_{kind}:{webhook}"


def stories_due(conn: sqlite3.Connection, webhook: Webhook, since: str,
                limit: int) -> list[tuple[int, str]]:
    """(story id, last seen) of the stories updated at ``since`` or later that the webhook
    takes and has not had, oldest update first."""
    tagged = ("" if not webhook.tags else
              " AND EXISTS (SELECT 1 FROM articles m JOIN sources s ON s.id = m.source_id, "
              "json_each(s.tags) t WHERE m.story_id = st.id AND t.value IN "
              f"({','.join('?' * len(webhook.tags))}))")
    return conn.execute(
        "SELECT st.id, st.last_seen FROM stories st WHERE st.last_seen >= ? "
        "AND st.source_count >= ? AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d "
        "WHERE d.webhook = ? AND d.story_id = st.id AND d.outcome != 'retry')"
        f"{tagged} ORDER BY st.last_seen, st.id LIMIT ?",
        [since, webhook.min_sources, webhook.name, *webhook.tags, limit]).fetchall()


def _dicts(conn: sqlite3.Connection, sql: str, params: list) -> list[dict]:
    cursor = conn.execute(sql, params)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def story_payload(conn: sqlite3.Connection, story_id: int, webhook: Webhook,
                  base_url: str | None) -> dict | None:
    """What is posted for a story: its row of ``latest_stories``, its versions (the
    canonical first), and a one-line ``text`` that chat services (Slack, Mattermost)
    show as it is."""
    [story] = _dicts(conn, "SELECT * FROM latest_stories WHERE story_id = ?",
                     [story_id]) or [None]
    if story is None:
        return None
    versions = _dicts(conn, "SELECT source, title, url, published, relation, similarity, "
                            "is_canonical FROM article_stories WHERE story_id = ? "
                            "ORDER BY is_canonical DESC, published, article_id", [story_id])
    story["page"] = f"{base_url.rstrip('/')}/story/{story_id}" if base_url else None
    link = story["canonical_url"] or story["page"] or ""
    return {"webhook": webhook.name, "story": story, "versions": versions,
            "text": f"{story['title']} ({story['source_count']} sources: "
                    f"{story['sources']}) {link}".strip()}


def webhook_overview(conn: sqlite3.Connection, config: Config) -> list[dict]:
    """Each configured webhook with the stories it was sent by outcome, its last attempt
    and last error (never its URL or headers), for ``aggregator webhooks``."""
    rows = []
    for webhook in config.webhooks:
        counts = dict(conn.execute("SELECT outcome, count(*) FROM webhook_deliveries "
                                   "WHERE webhook = ? GROUP BY outcome", [webhook.name]))
        last_attempt = conn.execute("SELECT max(last_attempt_at) FROM webhook_deliveries "
                                    "WHERE webhook = ?", [webhook.name]).fetchone()[0]
        last_error = conn.execute("SELECT error FROM webhook_deliveries WHERE webhook = ? "
                                  "AND error IS NOT NULL ORDER BY last_attempt_at DESC "
                                  "LIMIT 1", [webhook.name]).fetchone()
        since = conn.execute("SELECT value FROM meta WHERE key = ?",
                             [_meta_key("since", webhook.name)]).fetchone()
        rows.append({"name": webhook.name, "min_sources": webhook.min_sources,
                     "tags": list(webhook.tags), "since": since[0] if since else None,
                     "delivered": counts.get("delivered", 0),
                     "rejected": counts.get("rejected", 0),
                     "waiting": counts.get("retry", 0),
                     "last_attempt_at": last_attempt,
                     "last_error": last_error[0] if last_error else None})
    return rows


@dataclass(frozen=True)
class Attempt:
    story_id: int
    last_seen: str
    outcome: Delivery
    status: int | None = None
    error: str | None = None


def post(client: httpx.Client, webhook: Webhook, payload: dict) -> tuple[Delivery, int | None,
                                                                         str | None]:
    """One POST: the outcome, the HTTP status, and what went wrong."""
    if webhook.format == "text":
        body, media_type = payload["text"], "text/plain; charset=utf-8"
    else:
        body, media_type = json.dumps(payload, ensure_ascii=False), "application/json"
    try:
        response = client.post(webhook.url, content=body.encode("utf-8"),
                               headers={"Content-Type": media_type, **dict(webhook.headers)})
    except httpx.HTTPError as exc:
        return Delivery.RETRY, None, f"{type(exc).__name__}: {exc}"[:500]
    outcome = classify_delivery(response.status_code)
    error = None if outcome is Delivery.DELIVERED else \
        f"HTTP {response.status_code}: {response.text[:200]}"
    return outcome, response.status_code, error


@dataclass
class DeliveryReport:
    delivered: int = 0
    rejected: int = 0
    failed: int = 0  # attempts that will be made again
    waiting: int = 0  # webhooks not tried in this pass: in their delay after failures

    def __str__(self) -> str:
        return (f"{self.delivered} delivered, {self.rejected} rejected, {self.failed} to "
                f"try again, {self.waiting} webhooks waiting")


class Notifier:
    """The webhooks' deliveries, after each pass; their failures in a row and next tries
    are kept in memory (a restart tries each at once)."""

    def __init__(self, user_agent: str, timeout_s: float = DELIVERY_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        self._client: httpx.Client | None = None
        self._failures: dict[str, int] = {}
        self._next_try: dict[str, float] = {}

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(headers={"User-Agent": self._user_agent},
                                        timeout=httpx.Timeout(self._timeout_s),
                                        follow_redirects=False, trust_env=True)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def run(self, config: Config, conn: sqlite3.Connection,
            transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
            now: datetime, budget_s: float = DELIVERY_BUDGET_S) -> DeliveryReport:
        """Deliver what is due to every webhook, for at most ``budget_s`` seconds.  ``conn``
        reads the store; ``transaction`` writes what happened."""
        report = DeliveryReport()
        started = self.clock()
        stamp = to_iso(now)
        marks = self._marks(conn, config, transaction, stamp)
        for webhook in config.webhooks:
            if self.clock() < self._next_try.get(webhook.name, 0.0):
                report.waiting += 1
                continue
            since, cursor = marks_as_of_now(*marks[webhook.name], now)
            if (since, cursor) != marks[webhook.name]:
                log.warning("webhook %r: its marks are ahead of the clock, which was set "
                            "back: stories are looked for from now", webhook.name)
                with transaction() as writer:
                    writer.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                       [(since, _meta_key("since", webhook.name)),
                                        (cursor, _meta_key("cursor", webhook.name))])
            begin = max(since, to_iso(from_iso(cursor) - CURSOR_OVERLAP))
            attempts = []
            for story_id, last_seen in stories_due(conn, webhook, begin, STORIES_A_PASS):
                if self.clock() - started > budget_s:
                    break
                payload = story_payload(conn, story_id, webhook, config.http.base_url)
                if payload is None:
                    continue
                outcome, status, error = post(self.client, webhook, payload)
                attempts.append(Attempt(story_id, last_seen, outcome, status, error))
                if outcome is Delivery.RETRY:
                    break
            self._record(transaction, webhook, attempts, stamp, cursor)
            for attempt in attempts:
                report.delivered += attempt.outcome is Delivery.DELIVERED
                report.rejected += attempt.outcome is Delivery.REJECTED
                report.failed += attempt.outcome is Delivery.RETRY
            if attempts and attempts[-1].outcome is Delivery.RETRY:
                failures = self._failures.get(webhook.name, 0) + 1
                self._failures[webhook.name] = failures
                self._next_try[webhook.name] = self.clock() + retry_delay(failures)
                log.warning("webhook %r: %s; tried again in %.0f s", webhook.name,
                            attempts[-1].error, retry_delay(failures))
            elif attempts:
                self._failures.pop(webhook.name, None)
        return report

    @staticmethod
    def _marks(conn: sqlite3.Connection, config: Config, transaction,
               stamp: str) -> dict[str, tuple[str, str]]:
        """Each webhook's (since, cursor): when the daemon first saw it, and the last update
        it has been through; both ``stamp`` for a webhook seen for the first time.  A webhook
        taken out of the configuration loses both: added again, it starts from then, not
        from where it was (what it was sent stays recorded).  Written only when one of
        them changes: most passes read them and nothing else."""
        found: dict[str, dict[str, str]] = {}
        for key, value in conn.execute(
                "SELECT key, value FROM meta WHERE key LIKE 'webhook\\_%' ESCAPE '\\'"):
            kind, name = key[len("webhook_"):].split(":", 1)
            found.setdefault(name, {})[kind] = value
        names = {w.name for w in config.webhooks}
        stale = [_meta_key(kind, name) for name in found if name not in names
                 for kind in found[name]]
        missing = [name for name in names if set(found.get(name, {})) != {"since", "cursor"}]
        if stale or missing:
            with transaction() as writer:
                select_in(writer, "DELETE FROM meta WHERE key IN ({})", stale)
                writer.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   [(_meta_key(kind, name), stamp) for name in missing
                                    for kind in ("since", "cursor")])
            for name in missing:
                found[name] = {"since": stamp, "cursor": stamp}
        return {name: (found[name]["since"], found[name]["cursor"]) for name in names}

    @staticmethod
    def _record(transaction, webhook: Webhook, attempts: list[Attempt], stamp: str,
                cursor: str) -> None:
        if not attempts:
            return
        with transaction() as conn:
            conn.executemany(
                "INSERT INTO webhook_deliveries (webhook, story_id, outcome, attempts, status, "
                "error, last_attempt_at, delivered_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?) "
                "ON CONFLICT (webhook, story_id) DO UPDATE SET outcome = excluded.outcome, "
                "attempts = attempts + 1, status = excluded.status, error = excluded.error, "
                "last_attempt_at = excluded.last_attempt_at, "
                "delivered_at = excluded.delivered_at",
                [(webhook.name, a.story_id, str(a.outcome), a.status, a.error, stamp,
                  stamp if a.outcome is Delivery.DELIVERED else None) for a in attempts])
            done = [a.last_seen for a in attempts if a.outcome is not Delivery.RETRY]
            if done and max(done) > cursor:
                conn.execute("UPDATE meta SET value = ? WHERE key = ?",
                             [max(done), _meta_key("cursor", webhook.name)])
