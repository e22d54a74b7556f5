"""The Fever API (version 3) over the stories, for reading apps (Reeder, Unread, Fiery
Feeds, ReadKit, Read You, Fluent Reader...).

Each item is a story, not an article: the app shows its canonical, with the other versions
listed under it, and marking it read or saved marks the whole story (``reading``).  An app
syncs the stories, not the twenty copies of each.  Served at ``/fever/`` when the
configuration has ``[http.apps]``; the key an app sends is the MD5 of
``username:password``, as Fever defined it.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from .config import AppAccount
from .errors import AppRequestError
from .readers import read_only_connection
from .reading import (
    LARGEST_ID,
    AppRequest,
    app_sources,
    data_url,
    item_html,
    mark_read_before,
    mark_stories,
    marks_connection,
    saved_story_ids,
    story_ids_after,
    story_ids_before,
    story_items,
    unix_time,
    unread_story_ids,
)

API_VERSION = 3
# Fever's page of items, and the most ``with_ids`` may ask for.
ITEMS_A_REQUEST = 50
# ``mark=group&id=0``: every feed (Fever's "Kindling"); -1 is its "Sparks", which this
# aggregator does not have.
ALL_FEEDS = 0


def api_key(username: str, password: str) -> str:
    return hashlib.md5(f"{username}:{password}".encode()).hexdigest()


def group_id(tag: str) -> int:
    """A tag's group id: the same across restarts and whatever other tags come and go."""
    return zlib.crc32(tag.encode()) & 0x7FFFFFFF or 1


def _whole_number(params: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = params.get(name, "")
    if value == "" and default is not None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise AppRequestError(f"{name}: expected a whole number, got {value[:40]!r}") from None
    if abs(number) > LARGEST_ID:
        raise AppRequestError(f"{name}: {value[:40]} is beyond any id or time")
    return number


def _time(seconds: int) -> datetime | None:
    """``before``'s time (seconds since the epoch); None for 0, which apps send for none."""
    if not seconds:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise AppRequestError(f"before: {seconds} is not a time") from None


def _ids(params: Mapping[str, str], name: str) -> list[int]:
    values = [v for v in params.get(name, "").split(",") if v.strip()]
    try:
        ids = [int(v) for v in values]
    except ValueError:
        raise AppRequestError(f"{name}: expected comma-separated whole numbers") from None
    if any(abs(i) > LARGEST_ID for i in ids):
        raise AppRequestError(f"{name}: an id beyond any id")
    if len(ids) > ITEMS_A_REQUEST:
        raise AppRequestError(f"{name}: at most {ITEMS_A_REQUEST} ids, got {len(ids)}")
    return ids


class FeverApi(AppRequest):
    """Answers one request of the Fever API."""

    def answer(self, params: Mapping[str, str]) -> dict:
        answer: dict = {}
        wanted = set(params)
        if "mark" in params:
            # Fever answers a change with the list of ids it changed.
            wanted.add(self.mark(params))
        conn = read_only_connection(self.database)
        try:
            answer["last_refreshed_on_time"] = unix_time(conn.execute(
                "SELECT max(last_checked_at) FROM sources").fetchone()[0])
            if "groups" in wanted or "feeds" in wanted:
                groups, feeds_groups, feeds = self.feeds(conn)
                if "groups" in wanted:
                    answer["groups"] = groups
                if "feeds" in wanted:
                    answer["feeds"] = feeds
                answer["feeds_groups"] = feeds_groups
            if "favicons" in wanted:
                # A feed's favicon id is its own id (``feeds``).
                answer["favicons"] = [{"id": source_id, "data": data_url(media_type, data)}
                                      for source_id, media_type, data in conn.execute(
                                          "SELECT source_id, media_type, data FROM "
                                          "source_icons ORDER BY source_id")]
            if "links" in wanted:
                answer["links"] = []
            if "items" in wanted:
                answer.update(self.items(conn, params))
            if "unread_item_ids" in wanted:
                answer["unread_item_ids"] = ",".join(
                    map(str, unread_story_ids(conn, self.updated_since)))
            if "saved_item_ids" in wanted:
                answer["saved_item_ids"] = ",".join(map(str, saved_story_ids(conn)))
        finally:
            conn.close()
        return answer

    @staticmethod
    def feeds(conn: sqlite3.Connection) -> tuple[list, list, list]:
        """Fever's groups (the sources' tags), feeds_groups and feeds (``app_sources``)."""
        sources = app_sources(conn)
        tags: dict[str, list[int]] = {}
        for source in sources:
            for tag in source.tags:
                tags.setdefault(tag, []).append(source.source_id)
        groups = [{"id": group_id(tag), "title": tag} for tag in sorted(tags)]
        feeds_groups = [{"group_id": group_id(tag), "feed_ids": ",".join(map(str, ids))}
                        for tag, ids in sorted(tags.items())]
        feeds = [{"id": source.source_id,
                  "favicon_id": source.source_id if source.has_icon else 0,
                  "title": source.name,
                  "url": source.url, "site_url": source.site_url, "is_spark": 0,
                  "last_updated_on_time": unix_time(source.last_success)}
                 for source in sources]
        return groups, feeds_groups, feeds

    def items(self, conn: sqlite3.Connection, params: Mapping[str, str]) -> dict:
        if params.get("with_ids"):
            ids = _ids(params, "with_ids")
        elif params.get("max_id"):
            max_id = _whole_number(params, "max_id")
            ids = story_ids_before(conn, max_id if max_id > 0 else 2**62, ITEMS_A_REQUEST)
        else:
            ids = story_ids_after(conn, _whole_number(params, "since_id", 0), ITEMS_A_REQUEST)
        # Every story has its canonical (``aggregator check``): counted without a condition,
        # SQLite counts the stories from an index's pages instead of reading every row
        # (4 ms on 505,567 stories against 80, at each page of 50 items).
        total = conn.execute("SELECT count(*) FROM stories").fetchone()[0]
        return {"total_items": total, "items": [{
            "id": item.story_id,
            "feed_id": item.source_id,
            "title": item.title,
            "author": item.author or "",
            "html": item_html(item, self.story_page(item.story_id)),
            "url": item.url or "",
            "is_saved": int(item.saved),
            "is_read": int(item.read),
            "created_on_time": unix_time(item.first_seen),
        } for item in story_items(conn, ids)]}

    def mark(self, params: Mapping[str, str]) -> str:
        """``mark=item`` (``as`` read, unread, saved or unsaved), ``mark=feed`` or
        ``mark=group`` (``as=read``, with ``before``, the time of the app's list: what
        arrived after it stays unread).  Returns the name of the list of ids that the
        change affects, which the answer carries."""
        kind, action = params.get("mark", ""), params.get("as", "")
        target = _whole_number(params, "id")
        conn = marks_connection(self.database)
        try:
            if kind == "item":
                if action not in ("read", "unread", "saved", "unsaved"):
                    raise AppRequestError(f"as: expected read, unread, saved or unsaved "
                                            f"for an item, got {action[:20]!r}")
                mark = "saved" if action in ("saved", "unsaved") else "read"
                mark_stories(conn, [target], mark, action in ("read", "saved"), self.now)
                wanted = "saved_item_ids" if mark == "saved" else "unread_item_ids"
            elif kind in ("feed", "group"):
                if action != "read":
                    raise AppRequestError(f"as: a {kind} can only be marked read, "
                                            f"got {action[:20]!r}")
                before = _time(_whole_number(params, "before", 0)) or self.now
                sources = [target] if kind == "feed" else self._group_sources(conn, target)
                if sources is None or sources:
                    mark_read_before(conn, before, self.updated_since, self.now, sources)
                wanted = "unread_item_ids"
            else:
                raise AppRequestError(f"mark: expected item, feed or group, "
                                        f"got {kind[:20]!r}")
        finally:
            conn.close()
        return wanted

    @staticmethod
    def _group_sources(conn: sqlite3.Connection, group: int) -> list[int] | None:
        """The sources of the group ``group``; None for every source."""
        if group == ALL_FEEDS:
            return None
        return [source_id for source_id, tag in conn.execute(
            "SELECT s.id, t.value FROM sources s, json_each(s.tags) t") if group_id(tag) == group]


async def fever_endpoint(request: Request) -> JSONResponse:
    state = request.app.state
    account: AppAccount | None = state.apps
    if account is None:
        raise HTTPException(404, "the Fever API is off: add [http.apps] to the configuration")
    params = dict(request.query_params)
    if request.method == "POST":
        params.update({k: v for k, v in (await request.form()).items() if isinstance(v, str)})
    answer: dict = {"api_version": API_VERSION, "auth": 0}
    given = params.get("api_key", "").strip().lower().encode()
    if not hmac.compare_digest(given, api_key(account.username, account.password).encode()):
        return JSONResponse(answer)
    answer["auth"] = 1
    base_url = state.base_url or str(request.base_url).rstrip("/")
    api = FeverApi(state.database, account, base_url, datetime.now(UTC))
    try:
        answer.update(await run_in_threadpool(api.answer, params))
    except AppRequestError as exc:
        return JSONResponse({**answer, "error": str(exc)}, status_code=400)
    except sqlite3.OperationalError as exc:
        # A replica given a read-only file, or a writer that held the store too long.
        return JSONResponse({**answer, "error": f"the store cannot be changed now: {exc}"},
                            status_code=503)
    return JSONResponse(answer)
