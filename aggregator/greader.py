"""The Google Reader API, as FreshRSS and Miniflux serve it, over the stories: for the apps
that speak it (NetNewsWire, Reeder, Read You, FeedMe, Fluent Reader, NewsFlash...).

As with the Fever API (``fever``), each item is a story: its canonical's text with the other
versions linked under it, and a read or starred mark holds for the whole story
(``reading``).  Feeds are the sources, folders their tags.  An app signs in at
``/accounts/ClientLogin`` with ``[http.apps]``'s username and password and gets a token that
it sends as ``Authorization: GoogleLogin auth=TOKEN``; the token is derived from the
password, so it outlives restarts and ends when the password changes.  Sources are added in
the configuration, not through the API.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .config import AppAccount
from .errors import AppRequestError
from .reading import (
    LARGEST_ID,
    AppRequest,
    AppSource,
    StreamQuery,
    app_sources,
    is_whole_number,
    item_html,
    mark_read_before,
    mark_stories,
    marks_connection,
    story_items,
    stream_story_ids,
    unix_time,
    unread_counts,
)

READING_LIST = "user/-/state/com.google/reading-list"
READ = "user/-/state/com.google/read"
STARRED = "user/-/state/com.google/starred"
KEPT_UNREAD = "user/-/state/com.google/kept-unread"
LABEL = "user/-/label/"
FEED = "feed/"
ITEM = "tag:google.com,2005:reader/item/"
# A page of ids or items: 20 unless the app asks (``n``), at most this many.
PAGE = 20
LARGEST_PAGE = 10_000


def auth_token(account: AppAccount) -> str:
    digest = hmac.new(account.password.encode(), b"greader:" + account.username.encode(),
                      hashlib.sha256).hexdigest()
    return f"{quote(account.username, safe='')}/{digest}"


def item_id(story_id: int) -> str:
    """A story's id in the long form that items carry."""
    return f"{ITEM}{story_id:016x}"


def parse_item_id(value: str) -> int:
    """A story id from either form an app sends: the long one (hexadecimal) or the
    decimal one that ``stream/items/ids`` gives."""
    try:
        story_id = int(value[len(ITEM):], 16) if value.startswith(ITEM) else int(value)
    except ValueError:
        raise AppRequestError(f"i: {value[:60]!r} is not an item id") from None
    if not 0 <= story_id <= LARGEST_ID:
        raise AppRequestError(f"i: {value[:60]!r} is beyond any item id")
    return story_id


def _timestamp(value: str, name: str) -> datetime:
    """A time as apps send it: seconds (``ot``, ``nt``), microseconds (``ts``) or, from some
    apps, milliseconds, told apart by size: in seconds a time stays below 10**11 until the
    year 5138."""
    try:
        number = int(value)
        for scale in (1, 1_000, 1_000_000):
            if abs(number) < 10**11 * scale:
                return datetime.fromtimestamp(number / scale, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise AppRequestError(f"{name}: expected a time in seconds or microseconds, "
                             f"got {value[:40]!r}")


@dataclass
class Params:
    """A request's parameters, from its query and its form, each name with all its values."""

    values: dict[str, list[str]]

    def one(self, name: str, default: str = "") -> str:
        return self.values.get(name, [default])[0]

    def all(self, name: str) -> list[str]:
        return self.values.get(name, [])


class ReaderApi(AppRequest):
    """Answers one request of the Google Reader API."""

    def user_info(self, _params: Params) -> dict:
        return {"userId": "1", "userName": self.account.username, "userProfileId": "1",
                "userEmail": self.account.username if "@" in self.account.username else ""}

    def subscriptions(self, _params: Params) -> dict:
        sources: list[AppSource] = self.read(app_sources)
        return {"subscriptions": [{
            "id": f"{FEED}{source.source_id}", "title": source.name,
            "categories": [{"id": f"{LABEL}{tag}", "label": tag} for tag in source.tags],
            "url": source.url, "htmlUrl": source.site_url,
            "iconUrl": self.base_url + source.icon_path if source.has_icon else "",
        } for source in sources]}

    def tags(self, _params: Params) -> dict:
        sources: list[AppSource] = self.read(app_sources)
        folders = sorted({tag for source in sources for tag in source.tags})
        return {"tags": [{"id": STARRED}, *({"id": f"{LABEL}{tag}", "type": "folder"}
                                            for tag in folders)]}

    def unread_count(self, _params: Params) -> dict:
        def count(conn):
            return app_sources(conn), unread_counts(conn, self.updated_since)

        sources, counts = self.read(count)
        tags = {source.source_id: source.tags for source in sources}
        rows: dict[str, list] = {}
        for source_id, unread, newest in counts:
            for stream in (f"{FEED}{source_id}", READING_LIST,
                           *(f"{LABEL}{tag}" for tag in tags.get(source_id, ()))):
                total = rows.setdefault(stream, [0, ""])
                total[0] += unread
                total[1] = max(total[1], newest)
        return {"max": LARGEST_PAGE, "unreadcounts": [
            {"id": stream, "count": unread,
             "newestItemTimestampUsec": str(unix_time(newest) * 1_000_000)}
            for stream, (unread, newest) in rows.items()]}

    def stream_query(self, params: Params, stream: str | None = None) -> StreamQuery:
        """The stories that a stream (``s``, or the path of ``stream/contents``) with
        ``xt``, ``it``, ``ot``, ``nt``, ``r``, ``n`` and ``c`` asks for."""
        stream = stream or params.one("s", READING_LIST)
        limit = params.one("n", str(PAGE))
        if not is_whole_number(limit) or not 1 <= int(limit) <= LARGEST_PAGE:
            raise AppRequestError(f"n: expected a whole number from 1 to {LARGEST_PAGE}, "
                                     f"got {limit[:40]!r}")
        read: bool | None = None
        saved = False
        sources: tuple[int, ...] | None = None
        for target in (stream, *params.all("it")):
            if target == READ:
                read = True
            elif target == STARRED:
                saved = True
            elif target != READING_LIST:
                sources = self._sources_of(target)
        if READ in params.all("xt"):
            read = False
        continuation = params.one("c")
        if continuation and not (is_whole_number(continuation) and int(continuation) <= LARGEST_ID):
            raise AppRequestError(f"c: {continuation[:40]!r} is not a continuation "
                                     "this server gave")
        return StreamQuery(
            limit=int(limit), sources=sources, read=read, saved=saved,
            oldest=_timestamp(params.one("ot"), "ot") if params.one("ot") else None,
            newest=_timestamp(params.one("nt"), "nt") if params.one("nt") else None,
            oldest_first=params.one("r") == "o",
            after_id=int(continuation) if continuation else None)

    def _sources_of(self, stream: str) -> tuple[int, ...]:
        """The sources of a feed's stream (``feed/ID``) or a folder's (``user/-/label/TAG``)."""
        if stream.startswith(FEED) and is_whole_number(stream[len(FEED):]) and \
                int(stream[len(FEED):]) <= LARGEST_ID:
            return (int(stream[len(FEED):]),)
        if stream.startswith(LABEL):
            tag = stream[len(LABEL):]
            sources: list[AppSource] = self.read(app_sources)
            return tuple(source.source_id for source in sources if tag in source.tags)
        raise AppRequestError(f"s: {stream[:80]!r} is not a stream of this server")

    def _page(self, query: StreamQuery) -> tuple[list[int], str | None]:
        ids: list[int] = self.read(lambda conn: stream_story_ids(conn, query,
                                                                  self.updated_since))
        continuation = str(ids[-1]) if len(ids) == query.limit else None
        return ids, continuation

    def item_ids(self, params: Params) -> dict:
        ids, continuation = self._page(self.stream_query(params))
        answer: dict = {"itemRefs": [{"id": str(story_id)} for story_id in ids]}
        if continuation:
            answer["continuation"] = continuation
        return answer

    def item_contents(self, params: Params) -> dict:
        ids = [parse_item_id(value) for value in params.all("i")]
        if len(ids) > LARGEST_PAGE:
            raise AppRequestError(f"i: at most {LARGEST_PAGE} items, got {len(ids)}")
        return {"id": READING_LIST, "updated": int(self.now.timestamp()),
                "items": self._items(ids)}

    def stream_contents(self, params: Params, stream: str) -> dict:
        ids, continuation = self._page(self.stream_query(params, stream or None))
        answer = {"id": stream or READING_LIST, "updated": int(self.now.timestamp()),
                  "items": self._items(ids)}
        if continuation:
            answer["continuation"] = continuation
        return answer

    def _items(self, ids: list[int]) -> list[dict]:
        def read(conn):
            return app_sources(conn), story_items(conn, ids)

        sources, items = self.read(read)
        by_id = {source.source_id: source for source in sources}
        answer = []
        for item in items:
            source = by_id.get(item.source_id)
            first_seen = unix_time(item.first_seen)
            categories = [READING_LIST, *([READ] if item.read else []),
                          *([STARRED] if item.saved else []),
                          *(f"{LABEL}{tag}" for tag in (source.tags if source else ()))]
            answer.append({
                "id": item_id(item.story_id),
                "crawlTimeMsec": str(first_seen * 1000),
                "timestampUsec": str(first_seen * 1_000_000),
                "published": unix_time(item.published),
                "updated": unix_time(item.updated),
                "title": item.title,
                "author": item.author or "",
                "canonical": [{"href": item.url}] if item.url else [],
                "alternate": [{"href": item.url, "type": "text/html"}] if item.url else [],
                "categories": categories,
                "origin": {"streamId": f"{FEED}{item.source_id}",
                           "title": source.name if source else "",
                           "htmlUrl": source.site_url if source else ""},
                "summary": {"direction": "ltr",
                            "content": item_html(item, self.story_page(item.story_id))},
            })
        return answer

    def edit_tag(self, params: Params) -> str:
        """``a`` (add) and ``r`` (remove) the read or starred state of the items ``i``; the
        other states and labels are not kept here and are refused."""
        ids = [parse_item_id(value) for value in params.all("i")]
        if not ids:
            raise AppRequestError("i: no item given")
        changes = []
        for action, on in (("a", True), ("r", False)):
            for tag in params.all(action):
                if tag == READ:
                    changes.append(("read", on))
                elif tag == KEPT_UNREAD and on:
                    changes.append(("read", False))
                elif tag == STARRED:
                    changes.append(("saved", on))
                elif tag != KEPT_UNREAD:
                    raise AppRequestError(f"{action}: {tag[:80]!r} is not kept here "
                                             "(read and starred are)")
        conn = marks_connection(self.database)
        try:
            for mark, on in changes:
                mark_stories(conn, ids, mark, on, self.now)
        finally:
            conn.close()
        return "OK"

    def mark_all_as_read(self, params: Params) -> str:
        """The unread stories of a stream (``s``) first seen before ``ts`` (the time of the
        app's list; now if absent)."""
        stream = params.one("s", READING_LIST)
        sources = None if stream == READING_LIST else self._sources_of(stream)
        before = _timestamp(params.one("ts"), "ts") if params.one("ts") else self.now
        conn = marks_connection(self.database)
        try:
            if sources is None or sources:
                mark_read_before(conn, before, self.updated_since, self.now, sources)
        finally:
            conn.close()
        return "OK"


# The API's calls, by path under /reader/api/0/: how each answers, and whether it changes
# the store (POST only).
_READS = {"user-info": ReaderApi.user_info, "subscription/list": ReaderApi.subscriptions,
          "tag/list": ReaderApi.tags, "unread-count": ReaderApi.unread_count,
          "stream/items/ids": ReaderApi.item_ids,
          "stream/items/contents": ReaderApi.item_contents}
_WRITES = {"edit-tag": ReaderApi.edit_tag, "mark-all-as-read": ReaderApi.mark_all_as_read}
_REFUSED = ("subscription/edit", "subscription/quickadd", "rename-tag", "disable-tag")
# Preferences some apps read at sign-in and do without: none are kept.
_NO_PREFERENCES = {"preference/list": {"prefs": []},
                   "preference/stream/list": {"streamprefs": {}}}


async def _params(request: Request) -> Params:
    values: dict[str, list[str]] = {}
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        pairs += [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    return Params(values)


async def client_login(request: Request) -> PlainTextResponse:
    account: AppAccount | None = request.app.state.apps
    if account is None:
        return PlainTextResponse("the Google Reader API is off: add [http.apps] to the "
                                 "configuration\n", status_code=404)
    params = await _params(request)
    email, password = params.one("Email"), params.one("Passwd")
    if not (hmac.compare_digest(email.encode(), account.username.encode())
            and hmac.compare_digest(password.encode(), account.password.encode())):
        return PlainTextResponse("Error=BadAuthentication\n", status_code=401)
    token = auth_token(account)
    if params.one("output") == "json":
        return JSONResponse({"SID": token, "LSID": token, "Auth": token})
    return PlainTextResponse(f"SID={token}\nLSID={token}\nAuth={token}\n")


async def reader_api(request: Request) -> Response:
    account: AppAccount | None = request.app.state.apps
    if account is None:
        return PlainTextResponse("the Google Reader API is off: add [http.apps] to the "
                                 "configuration\n", status_code=404)
    header = request.headers.get("authorization", "")
    given = header[len("GoogleLogin auth="):] if header.startswith("GoogleLogin auth=") else ""
    if not hmac.compare_digest(given.encode(), auth_token(account).encode()):
        return PlainTextResponse("Unauthorized\n", status_code=401)
    path = request.path_params["path"].strip("/")
    params = await _params(request)
    base_url = request.app.state.base_url or str(request.base_url).rstrip("/")
    api = ReaderApi(request.app.state.database, account, base_url, datetime.now(UTC))
    try:
        if path == "token":
            # The token that apps send back with their changes (``T``): the header already
            # proves who they are, so it is given but not required.
            return PlainTextResponse(auth_token(account).rsplit("/", 1)[1][:57] + "\n")
        if path in _WRITES:
            if request.method != "POST":
                return PlainTextResponse(f"{path}: POST only\n", status_code=405)
            return PlainTextResponse(await run_in_threadpool(_WRITES[path], api, params))
        if path in _READS:
            return JSONResponse(await run_in_threadpool(_READS[path], api, params))
        if path in _NO_PREFERENCES:
            return JSONResponse(_NO_PREFERENCES[path])
        if path.startswith("stream/contents"):
            stream = path[len("stream/contents"):].strip("/")
            return JSONResponse(await run_in_threadpool(api.stream_contents, params, stream))
        if path in _REFUSED:
            return PlainTextResponse(f"{path}: sources are kept in the configuration file "
                                     "(aggregator add URL)\n", status_code=400)
    except AppRequestError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    except sqlite3.OperationalError as exc:
        return PlainTextResponse(f"the store cannot be changed now: {exc}\n", status_code=503)
    return PlainTextResponse(f"{path}: not a call of this server\n", status_code=404)
