"""Load and validate the TOML configuration into frozen dataclasses.

Nothing here touches the network or the database.  Every problem is reported as a
``ConfigError`` whose message names the file, the source and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import tomllib
import unicodedata
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .errors import AggregatorError, ConfigError

DEFAULT_CONFIG_PATH = Path("config/aggregator.toml")
CONFIG_ENV = "AGGREGATOR_CONFIG"
DB_ENV = "AGGREGATOR_DB"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# Beyond a century a duration is a mistake, and times that far ahead overflow Python's
# datetime (TOML also allows inf and nan).
LONGEST_DURATION_S = 100 * 365.25 * 86400


def parse_duration(value: Any) -> float:
    """Seconds from an int/float of seconds or a string such as ``"90s"``, ``"15m"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    seconds = None
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds is None:
        raise ValueError(f"expected a duration such as 900, \"15m\" or \"2h\", got {value!r}")
    if not seconds <= LONGEST_DURATION_S:  # nan fails this too
        raise ValueError(f"a duration of at most 100 years, got {value!r}")
    return seconds


@dataclass(frozen=True)
class ClusteringSettings:
    """Thresholds and weights of the story clusterer; ``docs/clustering.md`` justifies each."""

    enabled: bool = True
    window_days: float = 7.0
    story_span_days: float = 7.0
    # At most this many articles in the window (0: no limit): the oldest stories leave first.
    window_articles: int = 100_000
    time_sigma_days: float = 0.75
    long_text_time_sigma_days: float = 7.0
    undated_time_factor: float = 0.5
    member_anchor: float = 0.5
    evidence_beyond_one_term: float = 0.2
    num_perm: int = 128
    shingle_size: int = 3
    duplicate_threshold: float = 0.7
    candidate_threshold: float = 0.05
    salient_terms: int = 24
    vector_terms: int = 60
    title_weight: float = 3.0
    phrase_weight: float = 0.0
    same_story_threshold: float = 0.18
    long_text_threshold: float = 0.08
    short_text_words: int = 100
    long_text_words: int = 400
    idf_prior_docs: float = 2000.0
    max_candidates: int = 50
    canonical_policy: tuple[str, ...] = ("priority", "completeness", "earliest", "has_author")
    # "compact": numpy band index in this process; "datasketch": datasketch's MinHashLSH
    # with ``index_storage`` as its ``storage_config`` (e.g. Redis), see docs/performance.md.
    index_backend: str = "compact"
    index_storage: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class AppAccount:
    """The account that reading apps sign in with (``[http.apps]``), through the Fever API
    and the Google Reader API, to list the stories and mark them read or saved.  Stories
    updated longer ago than ``unread_for`` count as read, as a feed reader lets old entries
    go, so that an app's first sync of a large store does not fetch every story ever
    stored."""

    username: str
    password: str = field(repr=False)
    unread_for_s: float = 30 * 86400.0


@dataclass(frozen=True)
class HttpSettings:
    """The daemon's own web server (story pages, feeds, health, metrics, the reading apps'
    APIs)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str | None = None
    apps: AppAccount | None = None


@dataclass(frozen=True)
class Credentials:
    """What a source sends with each request to its own site (the scheme, host and port of
    ``site``, its configured URL): HTTP Basic authentication and extra headers.  Never sent
    to another site: not after a redirect there, not to a moved feed's new site, not with
    the entries' pages (``full_text``).  Kept out of ``repr``, so out of logs."""

    site: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class EntryFilter:
    """Which new entries of a source are stored: those whose title or link matches one of
    the ``include`` patterns (when there are any) and none of the ``exclude`` patterns
    (regular expressions, ``re.search``; ``(?i)`` for any case)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def keeps(self, title: str, link: str | None) -> bool:
        def matches(patterns: tuple[str, ...]) -> bool:
            return any(re.search(pattern, title) or (link and re.search(pattern, link))
                       for pattern in patterns)

        return (not self.include or matches(self.include)) and not matches(self.exclude)


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    interval_s: float
    priority: int = 0
    tags: tuple[str, ...] = ()
    enabled: bool = True
    full_text: bool = False
    adaptive: bool = False
    credentials: Credentials | None = None
    entry_filter: EntryFilter | None = None

    @property
    def is_local(self) -> bool:
        return urlsplit(self.url).scheme in ("", "file")


@dataclass(frozen=True)
class Webhook:
    """Where the daemon posts each story once it is reported by ``min_sources`` sources or
    more (and, with ``tags``, by a source with one of them): one POST a story, however many
    versions follow.  ``name`` keys its deliveries in the store; the URL and headers, which
    may hold a token, stay out of ``repr`` and the store."""

    name: str
    url: str = field(repr=False)
    min_sources: int = 1
    tags: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # "json": the story, its versions and a line of text; "text": that line alone, as
    # text/plain, for receivers that take a message body (ntfy, Gotify bridges, logs).
    format: str = "json"


@dataclass(frozen=True)
class Config:
    path: str
    database: str
    default_interval_s: float = 1800.0
    user_agent: str = "news-dedup-aggregator/0.1 (+https://github.com/news-dedup-aggregator)"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_concurrency: int = 8
    # Processes that normalise and fingerprint large batches beside the writer; -1: one
    # fewer than the CPUs (at most 4), 0: none (all in the daemon's own process).
    workers: int = -1
    # A process of its own writes each write group's rows while the writer decides the
    # next: about 3% more articles a second on 2 cores since the in-place writer shares its
    # transactions (a fifth before), for 16% more CPU and a process of about 90 MB.
    write_behind: bool = False
    block_private_addresses: bool = False
    permanent_redirect_after: int = 2
    min_host_interval_s: float = 0.0
    min_interval_s: float = 300.0
    max_interval_s: float = 86400.0
    # Stories whose newest member was fetched longer ago than this leave the store, with
    # their members and fetch attempts as old (0: the store keeps everything).
    retention_s: float = 0.0
    service_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sources: tuple[Source, ...] = ()
    webhooks: tuple[Webhook, ...] = ()

    def source(self, name: str) -> Source:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)


_CANONICAL_CRITERIA = {"priority", "completeness", "earliest", "has_author"}


class _Reader:
    """Typed access to one TOML table that remembers where it is, for error messages."""

    def __init__(self, path: str, table: dict[str, Any], source: str | None = None,
                 prefix: str = ""):
        self.path = path
        self.table = table
        self.source = source
        self.prefix = prefix

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, message, source=self.source, key=self.prefix + key)

    def reject_unknown(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.fail(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {_kind_name(kinds)}, got {type(value).__name__}")
        return value

    def duration(self, key: str, default: float) -> float:
        if key not in self.table:
            return default
        try:
            seconds = parse_duration(self.table[key])
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        if seconds <= 0:
            raise self.fail(key, "must be greater than zero")
        return seconds

    def number(self, key: str, default: float, low: float | None = None,
               high: float | None = None) -> float:
        value = self.get(key, (int, float), default)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(key, f"must be between {low} and {high}, got {value}")
        return float(value)


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _resolve_path(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def split_url(url: str) -> SplitResult:
    """``url``'s parts; ``ValueError`` naming what is wrong for text that is no URL at all
    (an unclosed IPv6 address, a port beyond 65535), which urlsplit refuses only in part."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading the port is what checks it
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    return parts


def _split(reader: _Reader, key: str, url: str) -> SplitResult:
    try:
        return split_url(url)
    except ValueError as exc:
        raise reader.fail(key, str(exc)) from None


def _check_url(reader: _Reader, base: Path, url: str) -> str:
    parts = _split(reader, "url", url)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise reader.fail("url", f"{url!r} has no host")
        return url
    if parts.scheme == "file":
        if not parts.path:
            raise reader.fail("url", f"{url!r} names no file")
        return "file://" + _resolve_path(base, parts.path)
    if parts.scheme == "" and url.strip():
        return _resolve_path(base, url)
    raise reader.fail("url", f"{url!r} is not an http(s) URL, a file: URL or a local path")


# A smaller window limit would evict stories within hours in any busy setup.
MIN_WINDOW_ARTICLES = 1000


def _window_articles(reader: _Reader, default: int) -> int:
    value = reader.get("window_articles", int, default)
    if value != 0 and not MIN_WINDOW_ARTICLES <= value <= 100_000_000:
        raise reader.fail("window_articles", f"must be 0 (no limit) or between "
                          f"{MIN_WINDOW_ARTICLES} and 100000000, got {value}")
    return value


def check_clustering_table(values: dict[str, Any]) -> None:
    """Check clustering settings given outside a configuration file (``eval --set``) as a
    ``[clustering]`` table is checked; a ConfigError names the first wrong one."""
    _load_clustering("--set", values)


def _load_clustering(path: str, table: Any) -> ClusteringSettings:
    if not isinstance(table, dict):
        raise ConfigError(path, "expected a table", key="clustering")
    reader = _Reader(path, table, prefix="clustering.")
    defaults = ClusteringSettings()
    reader.reject_unknown({f.name for f in dataclasses.fields(ClusteringSettings)})
    policy = reader.get("canonical_policy", list, list(defaults.canonical_policy))
    for criterion in policy:
        if criterion not in _CANONICAL_CRITERIA:
            raise reader.fail("canonical_policy", f"unknown criterion {criterion!r} (allowed: "
                              f"{', '.join(sorted(_CANONICAL_CRITERIA))})")
    num_perm = int(reader.number("num_perm", defaults.num_perm, 16, 1024))
    return ClusteringSettings(
        enabled=reader.get("enabled", bool, True),
        window_days=reader.number("window_days", defaults.window_days, 0.01, 3650),
        story_span_days=reader.number("story_span_days", defaults.story_span_days, 0.01, 3650),
        window_articles=_window_articles(reader, defaults.window_articles),
        time_sigma_days=reader.number("time_sigma_days", defaults.time_sigma_days, 0.01, 3650),
        long_text_time_sigma_days=reader.number("long_text_time_sigma_days",
                                                defaults.long_text_time_sigma_days, 0.01, 3650),
        undated_time_factor=reader.number("undated_time_factor",
                                          defaults.undated_time_factor, 0.0, 1.0),
        member_anchor=reader.number("member_anchor", defaults.member_anchor, 0.0, 1.0),
        evidence_beyond_one_term=reader.number(
            "evidence_beyond_one_term", defaults.evidence_beyond_one_term, 0.0, 1.0),
        num_perm=num_perm,
        shingle_size=int(reader.number("shingle_size", defaults.shingle_size, 1, 10)),
        duplicate_threshold=reader.number("duplicate_threshold", defaults.duplicate_threshold,
                                          0.05, 1.0),
        candidate_threshold=reader.number("candidate_threshold", defaults.candidate_threshold,
                                          0.01, 1.0),
        salient_terms=int(reader.number("salient_terms", defaults.salient_terms, 1, 500)),
        vector_terms=int(reader.number("vector_terms", defaults.vector_terms, 0, 100000)),
        title_weight=reader.number("title_weight", defaults.title_weight, 0, 100),
        phrase_weight=reader.number("phrase_weight", defaults.phrase_weight, 0, 100),
        same_story_threshold=reader.number("same_story_threshold",
                                           defaults.same_story_threshold, 0.0, 1.0),
        long_text_threshold=reader.number("long_text_threshold",
                                          defaults.long_text_threshold, 0.0, 1.0),
        short_text_words=int(reader.number("short_text_words", defaults.short_text_words,
                                           1, 100000)),
        long_text_words=int(reader.number("long_text_words", defaults.long_text_words,
                                          1, 100000)),
        idf_prior_docs=reader.number("idf_prior_docs", defaults.idf_prior_docs, 1, 1e9),
        max_candidates=int(reader.number("max_candidates", defaults.max_candidates, 1, 10000)),
        canonical_policy=tuple(policy),
        index_backend=_index_backend(reader),
        index_storage=tuple(sorted(reader.get("index_storage", dict, {}).items())),
    )


def _index_backend(reader: _Reader) -> str:
    backend = reader.get("index_backend", str, "compact")
    if backend not in ("compact", "datasketch"):
        raise reader.fail("index_backend", f"{backend!r} is not one of: compact, datasketch")
    if reader.table.get("index_storage") and backend != "datasketch":
        raise reader.fail("index_storage", "only the datasketch backend has a storage_config")
    return backend


def _optional_duration(reader: _Reader, key: str) -> float:
    if key not in reader.table:
        return 0.0
    try:
        return parse_duration(reader.table[key])
    except ValueError as exc:
        raise reader.fail(key, str(exc)) from None


def _load_service_groups(path: str, table: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``[service_groups]``: name = ["*.tumblr.com", ...]; hosts matching one pattern share
    one concurrency limit, one request spacing and one cooldown."""
    if not isinstance(table, dict):
        raise ConfigError(path, "expected a table of name = [host patterns]",
                          key="service_groups")
    groups = []
    for name, patterns in table.items():
        if not isinstance(patterns, list) or not patterns or \
                not all(isinstance(p, str) and p.strip() for p in patterns):
            raise ConfigError(path, "expected a non-empty list of host patterns such as "
                              '["*.tumblr.com"]', key=f"service_groups.{name}")
        groups.append((name, tuple(p.strip().lower() for p in patterns)))
    return tuple(groups)


def _load_http(path: str, table: Any, environ: Mapping[str, str],
               secrets: bool = True) -> HttpSettings:
    if not isinstance(table, dict):
        raise ConfigError(path, "expected a table", key="http")
    reader = _Reader(path, table, prefix="http.")
    reader.reject_unknown({"enabled", "host", "port", "base_url", "apps"})
    defaults = HttpSettings()
    base_url = reader.get("base_url", str, None)
    if base_url is not None and _split(reader, "base_url", base_url).scheme not in (
            "http", "https"):
        raise reader.fail("base_url", f"{base_url!r} is not an http(s) URL")
    return HttpSettings(
        enabled=reader.get("enabled", bool, defaults.enabled),
        host=reader.get("host", str, defaults.host),
        port=int(reader.number("port", defaults.port, 0, 65535)),
        base_url=base_url,
        apps=_load_app_account(path, reader.get("apps", dict, None), environ, secrets),
    )


def _password_from(reader: _Reader, variable: str, environ: Mapping[str, str],
                   secrets: bool) -> str:
    """The password in the environment variable ``variable`` (``password_env``, for
    containers' secrets).  Without ``secrets`` a variable that is not set stands for an
    empty password: commands that only edit or list the configuration run where the
    daemon's secrets are not."""
    password = environ.get(variable, None if secrets else "")
    if password is None:
        raise reader.fail("password_env", f"environment variable {variable} is not set")
    return password


def _load_app_account(path: str, table: dict | None, environ: Mapping[str, str],
                      secrets: bool = True) -> AppAccount | None:
    """``[http.apps]``: ``username`` with ``password`` or ``password_env``, and
    ``unread_for``."""
    if table is None:
        return None
    reader = _Reader(path, table, prefix="http.apps.")
    reader.reject_unknown({"username", "password", "password_env", "unread_for"})
    username = reader.get("username", str, "")
    if not username.strip():
        raise reader.fail("username", "is required")
    password = reader.get("password", str, None)
    variable = reader.get("password_env", str, None)
    if (password is None) == (variable is None):
        raise reader.fail("password", "give password or password_env (one of them)")
    if variable is not None:
        password = _password_from(reader, variable, environ, secrets)
    if secrets and not password:
        raise reader.fail("password", "must not be empty")
    return AppAccount(username=username, password=password,
                      unread_for_s=reader.duration("unread_for", AppAccount.unread_for_s))


def _text(reader: _Reader, key: str, value: str) -> str:
    """``value`` if it has no control characters but tab, line feed and carriage return,
    nor the non-characters U+FFFE and U+FFFF: names and tags go into OPML and XML feeds,
    which cannot hold them, and logs."""
    if any((unicodedata.category(c) == "Cc" and c not in "\t\n\r") or c in "\ufffe\uffff"
           for c in value):
        raise reader.fail(key, f"{value!r} has a control character")
    return value


def _tags(reader: _Reader) -> list[str]:
    tags = reader.get("tags", list, [])
    if not all(isinstance(tag, str) for tag in tags):
        raise reader.fail("tags", "expected a list of strings")
    return [_text(reader, "tags", tag) for tag in tags]


def _user_agent(reader: _Reader, default: str) -> str:
    user_agent = reader.get("user_agent", str, default)
    if problem := header_problem("User-Agent", user_agent):
        raise reader.fail("user_agent", problem)
    return user_agent


# Priorities go into SQLite's integers and sort keys; beyond this they are a mistake.
MAX_PRIORITY = 1_000_000


def _priority(reader: _Reader) -> int:
    priority = reader.get("priority", int, 0)
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise reader.fail("priority", f"must be between -{MAX_PRIORITY} and {MAX_PRIORITY}, "
                                      f"got {priority}")
    return priority


def _load_source(path: str, base: Path, index: int, table: Any,
                 default_interval_s: float, environ: Mapping[str, str],
                 excluded_everywhere: tuple[str, ...], secrets: bool = True) -> Source:
    if not isinstance(table, dict):
        raise ConfigError(path, "expected a table", key=f"sources[{index}]")
    name = table.get("name")
    label = name if isinstance(name, str) and name.strip() else f"#{index + 1}"
    reader = _Reader(path, table, source=label)
    reader.reject_unknown({"name", "url", "interval", "priority", "tags", "enabled",
                           "full_text", "username", "password", "password_env", "headers",
                           "include", "exclude"})
    if "name" not in table:
        raise reader.fail("name", "is required")
    name = _text(reader, "name", reader.get("name", str, ""))
    if not name.strip():
        raise reader.fail("name", "must not be empty")
    if "url" not in table:
        raise reader.fail("url", "is required")
    url = _check_url(reader, base, reader.get("url", str, ""))
    tags = _tags(reader)
    adaptive = table.get("interval") == "adaptive"
    return Source(
        name=name,
        url=url,
        adaptive=adaptive,
        interval_s=default_interval_s if adaptive else
        reader.duration("interval", default_interval_s),
        priority=_priority(reader),
        tags=tuple(tags),
        enabled=reader.get("enabled", bool, True),
        full_text=reader.get("full_text", bool, False),
        credentials=_load_credentials(reader, url, environ, secrets),
        entry_filter=_load_filter(reader, excluded_everywhere),
    )


def _patterns(reader: _Reader, key: str) -> tuple[str, ...]:
    """A list of regular expressions, each checked here, so that a broken one is reported
    with its key at start-up and not at the first entry it meets."""
    patterns = reader.get(key, list, [])
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise reader.fail(key, "expected a list of regular expressions (strings)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise reader.fail(key, f"{pattern!r} is not a regular expression: {exc}") from None
    return tuple(patterns)


def _load_filter(reader: _Reader, excluded_everywhere: tuple[str, ...]) -> EntryFilter | None:
    include = _patterns(reader, "include")
    exclude = excluded_everywhere + _patterns(reader, "exclude")
    return EntryFilter(include, exclude) if include or exclude else None


# An HTTP header's name (RFC 9110 token), and the headers a source may not set: the
# conditional GET's, which the fetcher keeps per feed, and those that frame the request.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection",
                     "if-none-match", "if-modified-since"}


def _load_credentials(reader: _Reader, url: str, environ: Mapping[str, str],
                      secrets: bool = True) -> Credentials | None:
    """``username`` with ``password`` (or ``password_env``, the name of an environment
    variable that holds it, for containers' secrets) and ``headers``, a table of extra
    request headers, for http(s) sources (``secrets``: ``_password_from``)."""
    keys = {"username", "password", "password_env", "headers"} & set(reader.table)
    if not keys:
        return None
    if urlsplit(url).scheme not in ("http", "https"):
        raise reader.fail(sorted(keys)[0], "credentials apply to http(s) sources only")
    username = reader.get("username", str, None)
    password = reader.get("password", str, None)
    variable = reader.get("password_env", str, None)
    if password is not None and variable is not None:
        raise reader.fail("password_env", "give password or password_env, not both")
    if variable is not None:
        password = _password_from(reader, variable, environ, secrets)
    if (username is None) != (password is None):
        raise reader.fail("username" if username is None else "password",
                          "username and password come together")
    headers = _headers(reader, authorization=username is None)
    return Credentials(site=url, username=username, password=password, headers=headers)


def _headers(reader: _Reader, authorization: bool = True) -> tuple[tuple[str, str], ...]:
    """``headers``, a table of extra request headers; without ``authorization`` that one
    is refused too (it comes from a username and password)."""
    headers = []
    for name, value in reader.get("headers", dict, {}).items():
        if problem := header_problem(name, value, authorization):
            raise reader.fail("headers", problem)
        headers.append((name, value))
    return tuple(headers)


def header_problem(name: str, value: object, authorization: bool = True) -> str | None:
    """What is wrong with an extra request header, if anything."""
    if not _HEADER_NAME.match(name):
        return f"{name!r} is not a header name"
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        return f"{name}: expected a string on one line"
    if not value.isascii():
        # httpx sends header values as ASCII and refuses anything else at every request.
        return f"{name}: expected ASCII text"
    if name.lower() in _RESERVED_HEADERS or (
            not authorization and name.lower() == "authorization"):
        return (f"{name} is set by the fetcher"
                + ("" if authorization else " (from username and password)"))
    return None


def _load_webhooks(path: str, tables: Any) -> tuple[Webhook, ...]:
    if not isinstance(tables, list):
        raise ConfigError(path, "expected an array of tables ([[webhooks]])", key="webhooks")
    webhooks: list[Webhook] = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(path, "expected a table", key=f"webhooks[{index}]")
        reader = _Reader(path, table, prefix=f"webhooks[{index}].")
        reader.reject_unknown({"name", "url", "min_sources", "tags", "headers", "format"})
        name = _text(reader, "name", reader.get("name", str, "")).strip()
        if not name:
            raise reader.fail("name", "is required")
        if name in {w.name for w in webhooks}:
            raise reader.fail("name", f"another webhook is named {name!r}")
        url = reader.get("url", str, "")
        parts = _split(reader, "url", url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise reader.fail("url", "expected an http(s) URL")
        tags = _tags(reader)
        body = reader.get("format", str, "json")
        if body not in ("json", "text"):
            raise reader.fail("format", f'expected "json" or "text", got {body!r}')
        webhooks.append(Webhook(
            name=name, url=url,
            min_sources=int(reader.number("min_sources", 1, 1, 1_000_000)),
            tags=tuple(tags), headers=_headers(reader), format=body))
    return tuple(webhooks)


def too_short_a_retention(retention_s: float, clustering: ClusteringSettings) -> str | None:
    """Why ``retention_s`` is too short a retention period, None if it is not: a story may
    leave the store only once it has left the clustering window, which reads its members'
    rows back."""
    if retention_s >= (clustering.window_days + 1) * _DURATION_UNITS["d"]:
        return None
    return f"at least clustering.window_days plus one day ({clustering.window_days + 1:g}d)"


def load_config(path: str | os.PathLike[str] | None = None,
                environ: dict[str, str] | None = None, secrets: bool = True) -> Config:
    """Read the configuration named by ``path``, else ``$AGGREGATOR_CONFIG``, else the default.

    ``$AGGREGATOR_DB`` overrides the database path.  Relative paths in the file are resolved
    against the file's own folder, so the result does not depend on the working directory.
    ``secrets = False`` reads a ``password_env`` that is not set as an empty password.
    """
    environ = os.environ if environ is None else environ
    config_path = config_file_path(path, environ)
    shown = str(config_path)
    try:
        # utf-8-sig: editors on Windows may start the file with a byte order mark.
        raw = tomllib.loads(config_path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(shown, "file not found") from None
    except OSError as exc:
        raise ConfigError(shown, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(shown, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(shown, f"invalid TOML: {exc}") from None

    base = config_path.resolve().parent
    top = _Reader(shown, raw)
    top.reject_unknown({"database", "default_interval", "user_agent", "connect_timeout",
                        "read_timeout", "total_timeout", "max_body_bytes", "max_concurrency",
                        "workers", "write_behind", "block_private_addresses",
                        "permanent_redirect_after",
                        "min_host_interval", "min_interval", "max_interval", "retention",
                        "exclude", "service_groups", "clustering", "http", "sources",
                        "webhooks"})
    defaults = Config(path=shown, database="")
    default_interval_s = top.duration("default_interval", defaults.default_interval_s)

    # Entries no source stores (``exclude`` at the top), before each source's own.
    excluded_everywhere = _patterns(top, "exclude")
    sources_raw = top.get("sources", list, [])
    sources: list[Source] = []
    seen: set[str] = set()
    for index, table in enumerate(sources_raw):
        source = _load_source(shown, base, index, table, default_interval_s, environ,
                              excluded_everywhere, secrets)
        if source.name in seen:
            raise ConfigError(shown, "duplicate source name", source=source.name, key="name")
        seen.add(source.name)
        sources.append(source)

    clustering = _load_clustering(shown, raw.get("clustering", {}))
    retention_s = _optional_duration(top, "retention")
    if retention_s and (shortfall := too_short_a_retention(retention_s, clustering)):
        raise top.fail("retention", f"must be 0 (keep everything) or {shortfall}")
    database = environ.get(DB_ENV) or top.get("database", str, "aggregator.db")
    if database != ":memory:":
        database = _resolve_path(base, database) if DB_ENV not in environ else database
    return Config(
        path=shown,
        database=database,
        default_interval_s=default_interval_s,
        user_agent=_user_agent(top, defaults.user_agent),
        connect_timeout_s=top.duration("connect_timeout", defaults.connect_timeout_s),
        read_timeout_s=top.duration("read_timeout", defaults.read_timeout_s),
        total_timeout_s=top.duration("total_timeout", defaults.total_timeout_s),
        block_private_addresses=top.get("block_private_addresses", bool,
                                        defaults.block_private_addresses),
        permanent_redirect_after=int(top.number("permanent_redirect_after",
                                                defaults.permanent_redirect_after, 1, 1000)),
        min_host_interval_s=_optional_duration(top, "min_host_interval"),
        min_interval_s=top.duration("min_interval", defaults.min_interval_s),
        max_interval_s=top.duration("max_interval", defaults.max_interval_s),
        retention_s=retention_s,
        service_groups=_load_service_groups(shown, raw.get("service_groups", {})),
        max_body_bytes=int(top.number("max_body_bytes", defaults.max_body_bytes, 1024, 2**40)),
        max_concurrency=int(top.number("max_concurrency", defaults.max_concurrency, 1, 1024)),
        workers=int(top.number("workers", defaults.workers, -1, 64)),
        write_behind=top.get("write_behind", bool, defaults.write_behind),
        clustering=clustering,
        http=_load_http(shown, raw.get("http", {}), environ, secrets),
        sources=tuple(sources),
        webhooks=_load_webhooks(shown, raw.get("webhooks", [])),
    )


def config_file_path(path: str | os.PathLike[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> Path:
    """The configuration file that ``load_config(path)`` reads."""
    environ = os.environ if environ is None else environ
    return Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def _toml_value(value: str | int | bool | list[str] | dict[str, str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    # JSON's string escapes are TOML's basic-string escapes; ASCII escapes would write
    # characters beyond the Basic Multilingual Plane as surrogate pairs, which TOML refuses.
    return json.dumps(value, ensure_ascii=False)


def source_table(name: str, url: str,
                 **settings: str | int | bool | list[str] | dict[str, str] | None) -> str:
    """A ``[[sources]]`` table as TOML text, for ``append_sources``; settings that are None
    or empty are left out, so the configuration's defaults apply."""
    lines = ["", "[[sources]]", f"name = {_toml_value(name)}", f"url = {_toml_value(url)}"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()
              if value is not None and value != [] and value != {}]
    return "\n".join(lines) + "\n"


def unique_source_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``... when sources have it already."""
    chosen, number = name, 2
    while chosen in taken:
        chosen, number = f"{name} ({number})", number + 1
    return chosen


def append_sources(config_path: str | os.PathLike[str], tables: list[str], what: str,
                   dry_run: bool = False) -> None:
    """Append source tables (``source_table``) to a configuration file, comments and order
    kept.  The file is replaced, permissions and all, only when the result is a valid
    configuration; else the error names ``what`` and the problem, and the file is as it
    was.  A running daemon notices the change and polls the new sources.  ``dry_run``:
    only the check, so that what is shown is what would be written."""
    target = Path(config_path)
    original = _file_text(target)
    newline = _newline(original)
    _replace_config(target, original.rstrip("\r\n") + newline
                    + "".join(tables).replace("\n", newline), what, dry_run=dry_run)


def _file_text(target: Path) -> str:
    """The configuration file's text as it is on disk: line endings (CRLF from Windows
    editors) and a byte order mark kept, so that an edit changes only what it means to."""
    with open(target, encoding="utf-8", newline="") as handle:
        return handle.read()


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _replace_config(target: Path, updated: str, what: str,
                    expected: Config | None = None, dry_run: bool = False) -> None:
    """Replace the configuration file with ``updated`` if it is valid and, when given,
    reads as ``expected`` (bar its path): an edit of the text that changed anything else is
    refused, and the file stays as it was.  ``dry_run``: check, and leave the file; the
    check is made in the system's temporary folder, as the configuration's may be
    read-only (the relative paths it resolves are not opened)."""
    folder = tempfile.gettempdir() if dry_run else target.resolve().parent
    try:
        # newline="": the text keeps the file's own line endings (``_file_text``).
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder,
                                         suffix=".toml", delete=False, newline="") as handle:
            handle.write(updated)
    except OSError as exc:
        # A configuration mounted read-only (the Docker setup) is edited on the host.
        raise AggregatorError(f"{target}: {what} needs to write the configuration's folder: "
                              f"{exc.strerror or exc}") from None
    try:
        try:
            result = load_config(handle.name, environ={}, secrets=False)
        except ConfigError as exc:
            where = "".join(f"{label} {value!r}: " for label, value in
                            (("source", exc.source), ("key", exc.key)) if value is not None)
            raise AggregatorError(f"{what} would break the configuration {target}: "
                                  f"{where}{exc.message}") from None
        if expected is not None and dataclasses.replace(result, path=expected.path) != expected:
            raise AggregatorError(f"{target}: {what} cannot be done safely on this file's "
                                  "layout; edit it by hand")
        if not dry_run:
            shutil.copymode(target, handle.name)
            os.replace(handle.name, target)
    finally:
        # Whatever was not moved into place goes: a refused edit, a dry run.
        with suppress(FileNotFoundError):
            os.unlink(handle.name)


_TABLE_HEADER = re.compile(r"^\s*\[")
_SOURCES_HEADER = re.compile(r"^\s*\[\[\s*sources\s*\]\]\s*(#.*)?$")
_ENABLED_LINE = re.compile(r"^(\s*enabled\s*=\s*)(true|false)")


def _source_lines(lines: list[str], index: int) -> tuple[int, int]:
    """The lines ``[start, end)`` of the ``index``-th ``[[sources]]`` table: its header up to
    the next table's, less the comments and blank lines just before that one (they are the
    next table's introduction)."""
    headers = [number for number, line in enumerate(lines) if _SOURCES_HEADER.match(line)]
    if index >= len(headers):
        raise IndexError(index)
    start = headers[index]
    end = next((number for number in range(start + 1, len(lines))
                if _TABLE_HEADER.match(lines[number])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip()
                               or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return start, end


def change_source(config_path: str | os.PathLike[str], name: str,
                  enabled: bool | None) -> bool:
    """Remove the source ``name`` from a configuration file (``enabled`` None), or set its
    ``enabled``; the rest of the file stays as it was, comments and all.  Returns whether
    the file changed (not when the source is already as asked).  The result must read as
    the configuration before with only that change, or the file is left alone."""
    target = Path(config_path)
    before = load_config(target, environ={}, secrets=False)
    names = [source.name for source in before.sources]
    if name not in names:
        known = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
        raise AggregatorError(f"{target}: no source is named {name!r} "
                              f"(sources: {known or 'none'})")
    what = "removing" if enabled is None else ("enabling" if enabled else "disabling")
    what += f" source {name!r}"
    index = names.index(name)
    if enabled is not None and before.sources[index].enabled == enabled:
        return False
    text = _file_text(target)
    newline = _newline(text)
    # A byte order mark stays where it is, out of the way of the first line's table header.
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    lines = text[len(bom):].splitlines(keepends=True)
    try:
        start, end = _source_lines(lines, index)
    except IndexError:
        raise AggregatorError(f"{target}: {what} cannot be done safely on this file's "
                              "layout (sources not written as [[sources]] tables); edit it "
                              "by hand") from None
    if enabled is None:
        # Comment lines right above the header introduce the table: they go with it.
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        del lines[start:end]
        sources = tuple(s for s in before.sources if s.name != name)
    else:
        value = "true" if enabled else "false"
        found = [n for n in range(start + 1, end) if _ENABLED_LINE.match(lines[n])]
        if found:
            lines[found[0]] = _ENABLED_LINE.sub(rf"\g<1>{value}", lines[found[0]], count=1)
        else:
            if not lines[end - 1].endswith("\n"):
                lines[end - 1] += newline
            lines.insert(end, f"enabled = {value}{newline}")
        sources = tuple(dataclasses.replace(s, enabled=enabled) if s.name == name else s
                        for s in before.sources)
    _replace_config(target, bom + "".join(lines), what,
                    expected=dataclasses.replace(before, sources=sources))
    return True
