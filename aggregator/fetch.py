"""Getting feed documents: httpx for http(s), the file system for local sources.

This is the one place where HTTP status codes and headers get their meaning
(``classify_status``); everything downstream sees a ``FetchResult`` or a ``FetchError``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from .config import Config, Credentials
from .errors import FetchError, SourceGoneError
from .normalize import DEFAULT_PORTS


class Outcome(StrEnum):
    OK = "ok"
    NOT_MODIFIED = "not_modified"
    THROTTLED = "throttled"
    GONE = "gone"
    ERROR = "error"


def classify_status(status: int) -> Outcome:
    """What an HTTP status means for a feed poll."""
    if status == 304:
        return Outcome.NOT_MODIFIED
    if 200 <= status < 300:
        return Outcome.OK
    if status == 410:
        return Outcome.GONE
    if status in (429, 503):
        return Outcome.THROTTLED
    return Outcome.ERROR


class Delivery(StrEnum):
    DELIVERED = "delivered"
    # The receiver cannot take it now (busy, failing, or not configured to): this payload
    # and the ones after it wait.
    RETRY = "retry"
    # The receiver refuses this payload itself: it is not sent again, the others are.
    REJECTED = "rejected"


def classify_delivery(status: int) -> Delivery:
    """What an HTTP status means for a webhook POST.  Only the statuses about the payload
    (400, 413, 415, 422) give it up: a 401, 404 or 3xx says the webhook is misconfigured,
    and once it is mended every story still waiting is delivered."""
    if 200 <= status < 300:
        return Delivery.DELIVERED
    if status in (400, 413, 415, 422):
        return Delivery.REJECTED
    return Delivery.RETRY


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date header's time (``Date``, ``Expires``, ``Retry-After``), in UTC; None
    when absent or invalid."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date form).  ``now``:
    the response's own ``Date`` where it has one (``server_now``), as the HTTP-date form is a
    time on the server's clock."""
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit also takes "²", which float refuses.
    if value.isascii() and value.isdigit():
        return float(value)
    when = parse_http_date(value)
    return None if when is None else max(0.0, (when - now).total_seconds())


def parse_expires(value: str | None, now: datetime) -> float | None:
    """Seconds until an Expires header's date (none when absent, invalid or past), from
    ``now`` as ``parse_retry_after`` takes it."""
    when = parse_http_date(value)
    if when is None:
        return None
    seconds = (when - now).total_seconds()
    return seconds if seconds > 0 else None


def server_now(date: datetime | None, age: str | None, local_now: datetime) -> datetime:
    """The time that a response's Expires and Retry-After dates count from: its ``Date``,
    the server's clock, as HTTP caches count a freshness lifetime (RFC 9111, 4.2.1), so that
    a local clock some way off the server's neither stretches nor cuts the wait; the local
    time where the response has no valid ``Date``.  A cache that answers keeps the ``Date``
    of the answer it stored and says how long ago that was in ``Age``, which is added."""
    if date is None:
        return local_now
    age = (age or "").strip()
    if not (age.isascii() and age.isdigit()):
        return date
    try:
        # At most 2^31 s, as caches take an Age too large to hold (RFC 9111, 1.2.2).
        return date + timedelta(seconds=min(int(age[:12]), 2 ** 31))
    except OverflowError:  # past the year 9999
        return date


def parse_max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        seconds = value.strip().strip('"')
        if name.lower() == "max-age" and seconds.isascii() and seconds.isdigit():
            return float(seconds)
    return None


@dataclass(frozen=True)
class FetchResult:
    outcome: Outcome
    url: str
    status: int | None = None
    body: bytes = b""
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    max_age_s: float | None = None
    retry_after_s: float | None = None
    permanent_redirect: str | None = None
    # How far the local clock was ahead of the server's (its ``Date``) when the answer came:
    # negative when behind; None without a valid ``Date`` (and for local files).
    clock_ahead_s: float | None = None


@dataclass(frozen=True)
class FetchLimits:
    user_agent: str
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    block_private_addresses: bool = False

    @classmethod
    def of(cls, config: Config) -> FetchLimits:
        return cls(user_agent=config.user_agent, connect_timeout_s=config.connect_timeout_s,
                   read_timeout_s=config.read_timeout_s,
                   total_timeout_s=config.total_timeout_s,
                   max_body_bytes=config.max_body_bytes,
                   block_private_addresses=config.block_private_addresses)


def refuse_private_address(source: str, url: str) -> None:
    """Raise unless every address ``url``'s host resolves to is public.

    For deployments where users supply feed URLs: the daemon must not be turned into a probe
    of its own network.  (The check resolves the name itself; a resolver that answers
    differently a moment later could still point the connection elsewhere.)
    """
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError(source, f"cannot resolve {host!r}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if (address.is_private or address.is_loopback or address.is_link_local
                or address.is_reserved or address.is_multicast or address.is_unspecified):
            raise FetchError(source, f"refused: {host} resolves to the non-public address "
                             f"{address} (block_private_addresses is on)")


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else Path(url)


def fetch_local(source: str, url: str, last_modified: str | None,
                limits: FetchLimits) -> FetchResult:
    """Read a local feed file; an unchanged modification time counts as not modified."""
    path = _local_path(url)
    try:
        stat = path.stat()
        mtime = str(stat.st_mtime_ns)
        if last_modified == mtime:
            return FetchResult(Outcome.NOT_MODIFIED, url, last_modified=mtime)
        if stat.st_size > limits.max_body_bytes:
            raise FetchError(source, f"{path}: {stat.st_size} bytes is over the "
                             f"{limits.max_body_bytes}-byte limit")
        body = path.read_bytes()
    except FileNotFoundError:
        raise FetchError(source, f"{path}: no such file") from None
    except OSError as exc:
        raise FetchError(source, f"{path}: {exc.strerror or exc}") from None
    content_type = "application/json" if path.suffix == ".json" else None
    return FetchResult(Outcome.OK, url, body=body, content_type=content_type,
                       last_modified=mtime)


def make_client(limits: FetchLimits) -> httpx.Client:
    timeout = httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s)
    return httpx.Client(
        headers={"User-Agent": limits.user_agent,
                 "Accept": "application/rss+xml, application/atom+xml, application/feed+json, "
                           "application/json;q=0.9, application/xml;q=0.9, text/xml;q=0.8, "
                           "*/*;q=0.5"},
        timeout=timeout,
        follow_redirects=False,
        trust_env=True,
    )


def site_of(url: str) -> tuple[str, str, int | None]:
    """A URL's origin: scheme, host and port (the scheme's default where none is given)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def request_credentials(credentials: Credentials | None,
                        url: str) -> tuple[dict[str, str], httpx.BasicAuth | None]:
    """The headers and authentication a request to ``url`` carries from ``credentials``:
    all of them on the source's own site, nothing anywhere else."""
    if credentials is None or site_of(url) != site_of(credentials.site):
        return {}, None
    auth = (httpx.BasicAuth(credentials.username, credentials.password)
            if credentials.username is not None else None)
    return dict(credentials.headers), auth


def validator(response: httpx.Response, name: bytes) -> str | None:
    """A validator (``ETag``, ``Last-Modified``) as the server sent it: its bytes read as
    Latin-1, one character a byte, so that the conditional GET sends them back unchanged
    (``validator_bytes``).  httpx reads bytes beyond ASCII as UTF-8 where they are, and
    sends only ASCII text: a server's non-ASCII ETag failed every later request."""
    for key, value in response.headers.raw:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def validator_bytes(value: str) -> bytes:
    # Values stored before validators were kept as Latin-1 may hold text that httpx read
    # as UTF-8: those go back as UTF-8, their bytes as they came.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def fetch_http(client: httpx.Client, source: str, url: str, etag: str | None,
               last_modified: str | None, limits: FetchLimits,
               credentials: Credentials | None = None) -> FetchResult:
    """One conditional GET, following at most ``max_redirects`` redirects by hand so that a
    chain made only of permanent ones (301/308) can be reported as the feed's new address.
    ``credentials`` go with each hop on the source's own site (``request_credentials``)."""
    conditional = {}
    if etag:
        conditional["If-None-Match"] = validator_bytes(etag)
    if last_modified:
        conditional["If-Modified-Since"] = validator_bytes(last_modified)
    now = datetime.now(UTC)
    deadline = time.monotonic() + limits.total_timeout_s
    current = url
    permanent = True
    seen = {url}
    for _hop in range(limits.max_redirects + 1):
        if limits.block_private_addresses:
            refuse_private_address(source, current)
        extra, auth = request_credentials(credentials, current)
        try:
            with client.stream("GET", current, headers={**extra, **conditional},
                               auth=auth) as response:
                if response.has_redirect_location:
                    target = str(response.url.join(response.headers.get("location", "")))
                    scheme = urlsplit(target).scheme
                    if scheme not in ("http", "https"):
                        raise FetchError(source, f"redirect from {current} to a {scheme or 'non'}"
                                         f"-http URL ({target}) refused", response.status_code)
                    if target in seen:
                        raise FetchError(source, f"redirect loop at {target}",
                                         response.status_code)
                    permanent = permanent and response.status_code in (301, 308)
                    seen.add(target)
                    current = target
                    continue
                return _read_response(response, source, url, current, permanent, now, limits,
                                      deadline)
        except httpx.TimeoutException as exc:
            raise FetchError(source, f"timed out fetching {current}: "
                             f"{type(exc).__name__}", unreachable=True) from None
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise FetchError(source, f"cannot fetch {current}: {exc}",
                             unreachable=True) from None
        except httpx.HTTPError as exc:
            raise FetchError(source, f"cannot fetch {current}: {exc}") from None
        except httpx.InvalidURL as exc:
            raise FetchError(source, f"{current} is not a URL: {exc}") from None
    raise FetchError(source, f"more than {limits.max_redirects} redirects from {url}")


def _read_response(response: httpx.Response, source: str, url: str, final_url: str,
                   permanent: bool, now: datetime, limits: FetchLimits,
                   deadline: float) -> FetchResult:
    status = response.status_code
    outcome = classify_status(status)
    received = datetime.now(UTC)
    date = parse_http_date(response.headers.get("date"))
    now = server_now(date, response.headers.get("age"), now)
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    if outcome is Outcome.GONE:
        raise SourceGoneError(source, f"{final_url} answered 410 Gone", status)
    if outcome in (Outcome.THROTTLED, Outcome.ERROR):
        hint = (": it wants credentials (username and password, or headers, in the "
                "source's configuration), or refused those sent" if status == 401 else "")
        raise FetchError(source, f"{final_url} answered HTTP {status}{hint}", status,
                         retry_after)
    body = _limited_body(response, source, final_url, limits, deadline)
    if outcome is Outcome.NOT_MODIFIED:
        # Read all the same (it should be empty): an unread response closes its connection,
        # and a pass of 304s would open a new one for every feed.
        body = b""
    return FetchResult(
        outcome=outcome,
        url=final_url,
        status=status,
        body=body,
        content_type=response.headers.get("content-type"),
        etag=validator(response, b"etag"),
        last_modified=validator(response, b"last-modified"),
        # Cache-Control max-age wins over Expires, as in HTTP caching.
        max_age_s=parse_max_age(response.headers.get("cache-control"))
        or parse_expires(response.headers.get("expires"), now),
        retry_after_s=retry_after,
        permanent_redirect=final_url if final_url != url and permanent else None,
        clock_ahead_s=None if date is None else (received - now).total_seconds(),
    )


def _limited_body(response: httpx.Response, source: str, final_url: str, limits: FetchLimits,
                  deadline: float) -> bytes:
    chunks = []
    size = 0
    for chunk in response.iter_bytes():
        # A server trickling bytes never trips the read timeout; the deadline stops it.
        if time.monotonic() > deadline:
            raise FetchError(source, f"{final_url}: no complete answer within "
                             f"{limits.total_timeout_s:.0f} s", response.status_code)
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise FetchError(source, f"{final_url}: body over the {limits.max_body_bytes}"
                             "-byte limit (after decompression)", response.status_code)
        chunks.append(chunk)
    return b"".join(chunks)


def fetch(client: httpx.Client | None, source: str, url: str, etag: str | None,
          last_modified: str | None, limits: FetchLimits,
          credentials: Credentials | None = None) -> FetchResult:
    scheme = urlsplit(url).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        return fetch_local(source, url, last_modified, limits)
    if client is None:
        raise FetchError(source, "no HTTP client available")
    return fetch_http(client, source, url, etag, last_modified, limits, credentials)
