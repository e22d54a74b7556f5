"""The ``aggregator`` command line."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import __version__
from .config import (
    MAX_PRIORITY,
    ClusteringSettings,
    Config,
    check_clustering_table,
    config_file_path,
    load_config,
    parse_duration,
    split_url,
    too_short_a_retention,
)
from .errors import AggregatorError, ConfigError, SourceError
from .readers import counted, newest_only_note

if TYPE_CHECKING:
    from .store import Store

# Ids and counts as SQLite stores them (signed 64-bit integers); a larger number typed
# would make a query fail rather than find nothing.
STORED_ID = click.IntRange(1, 2**63 - 1)
COUNT = click.IntRange(1, 1_000_000_000)

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False),
    help="Configuration file [default: $AGGREGATOR_CONFIG or config/aggregator.toml].")


def handle_errors(command):
    """Turn the project's errors into one clear line and an exit status."""

    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except AggregatorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def store_at(database: str) -> Store:
    """The store, imported here and not with this module: a worker process imports the
    daemon's main script again (``multiprocessing``'s spawn), and with it this module; the
    store's module would cost each worker memory it never uses."""
    from .store import Store

    return Store(database)


@contextmanager
def window_alone(database: str, advice: str) -> Iterator[None]:
    """The store's window lock held alone (``retention.window_to_self``) for a command that
    changes stories under any window kept in memory; a clear error while a daemon holds it."""
    from .retention import window_lock_path, window_to_self

    with window_to_self(database) as alone:
        if not alone:
            raise click.ClickException(f"{database}: a daemon is running on it (it holds "
                                       f"{window_lock_path(database)}); {advice}")
        yield


def open_store(config_path: str | None) -> Store:
    return store_at(load_config(config_path).database)


@click.group()
@click.version_option(__version__, prog_name="aggregator")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """A feed aggregator that keeps one canonical version of every story.

    \b
    Quick start (offline, on the bundled seed feeds):
        aggregator run --once
        aggregator stories
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@CONFIG_OPTION
@click.option("--once", is_flag=True, help="Run one pass over the sources that are due, then exit.")
@click.option("--all", "force_all", is_flag=True,
              help="With --once: fetch every enabled source, due or not (a source disabled "
                   "by a 410 Gone is enabled again if it answers).")
@click.option("--tick", default="30s", show_default=True,
              help="How often the daemon looks for due sources (at least 1s).")
@handle_errors
def run(config_path: str | None, once: bool, force_all: bool, tick: str) -> None:
    """Poll the configured feeds and cluster their entries into stories.

    \b
    Examples:
        aggregator run --once              # one pass, then exit
        aggregator run                     # the daemon; stop with Ctrl-C or SIGTERM
        kill -HUP PID                      # reload its configuration now
        AGGREGATOR_DB=/data/a.db aggregator run --config /etc/aggregator.toml
    """
    from .pipeline import Aggregator
    from .retention import holding_window
    from .schedule import Daemon

    config = load_config(config_path)
    try:
        tick_s = parse_duration(tick)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tick") from None
    if tick_s < MIN_TICK_S:
        # Below a second the scheduler skips tick after tick while a pass runs, and warns
        # each time: a pass is what takes the time, not the waiting between them.
        raise click.BadParameter(f"at least {MIN_TICK_S:g}s, got {tick!r}", param_hint="--tick")
    # Taken before the window is loaded: while this process keeps a window,
    # ``aggregator purge`` leaves the store to its retention, and ``recluster``, ``split``
    # and ``merge`` leave its stories to the daemon (a change made between the loading and
    # the lock would be missing from the window).
    with holding_window(config.database):
        aggregator = Aggregator(config)
        try:
            _run(aggregator, config, once, force_all, tick_s, Daemon)
        finally:
            aggregator.close()


def _run(aggregator, config, once: bool, force_all: bool, tick_s: float, Daemon) -> None:
    """``run`` with its store open and the window lock held."""
    if once:
        reports = aggregator.run_pass(force=force_all)
        for report in reports:
            detail = f": {report.error}" if report.error else ""
            filtered = f", {report.filtered} filtered out" if report.filtered else ""
            click.echo(f"{report.source}: {report.outcome}, {report.entries} entries, "
                       f"{report.new_articles} new{filtered}{detail}")
        if not reports:
            click.echo("no source is due")
        if config.webhooks:
            click.echo(f"webhooks: {aggregator.last_delivery}")
        return
    from .corrections import NewCorrections
    from .web import DaemonStatus

    status = DaemonStatus(index_articles=lambda: aggregator.clusterer.window_size,
                          index_article_limit=lambda: aggregator.settings.window_articles,
                          vocabulary_terms=aggregator.vocabulary_terms,
                          clock_ahead_s=aggregator.server_clocks.ahead_s,
                          tick_s=tick_s)
    watcher = ConfigWatcher(config.path, on_reload=lambda new: follow_web_settings(server, new))

    def one_pass(stopping) -> None:
        watcher.reload_if_changed(aggregator)
        started = time.monotonic()
        aggregator.run_pass(stopping)
        status.pass_finished(time.monotonic() - started)

    new_corrections = NewCorrections(config.database)

    def wanted() -> bool:
        """A pass before the next tick for a reader's correction kept by another process,
        or an edited configuration file (``aggregator add``, an editor)."""
        corrections = new_corrections()  # asked every time: it keeps what it last saw
        return watcher.changed() or corrections

    daemon = Daemon(one_pass, tick_s=tick_s, wanted=wanted)
    try:
        server = start_web_server(config, status) if config.http.enabled else None
    except AggregatorError:
        aggregator.close()
        raise
    aggregator.start_workers()

    def stop(signum, _frame):
        click.echo(f"received {signal.Signals(signum).name}; finishing the current write",
                   err=True)
        if server is not None:
            server.should_exit = True
        daemon.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Asked for: the daemon's watch (``wanted``) then passes within a second.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: watcher.request())
    click.echo(f"polling {len(config.sources)} sources into {config.database}", err=True)
    try:
        daemon.start()
    finally:
        new_corrections.close()


class ConfigWatcher:
    """Reloads the configuration before a pass when its file changed or SIGHUP asked for it
    (the daemon asks ``changed`` every second, and passes at once if so).

    A broken new file is reported and the daemon goes on with the configuration it has.
    """

    def __init__(self, path: str, on_reload: Callable[[Config], None] | None = None):
        self.path = path
        self.requested = False
        self.mtime = self._mtime()
        # What else takes the new configuration, after the aggregator.
        self.on_reload = on_reload

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    def request(self) -> None:
        self.requested = True

    def changed(self) -> bool:
        """Whether the next ``reload_if_changed`` reloads."""
        return self.requested or self._mtime() != self.mtime

    def reload_if_changed(self, aggregator) -> list[str] | None:
        mtime = self._mtime()
        if not self.requested and mtime == self.mtime:
            return None
        self.requested = False
        self.mtime = mtime
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            logging.getLogger(__name__).error("configuration not reloaded: %s", exc)
            return None
        changes = aggregator.reload(config)
        if self.on_reload is not None:
            self.on_reload(config)
        logging.getLogger(__name__).warning("configuration reloaded: %s",
                                            ", ".join(changes) or "no change")
        return changes


def follow_web_settings(server, config: Config) -> None:
    """What a reloaded configuration changes in the running web server: the reading apps'
    account, so that a new password takes effect without a restart.  Its address, port and
    base URL are read once, at the start."""
    if server is not None:
        server.config.app.state.apps = config.http.apps


# The shortest wait between two of the daemon's looks at what is due.
MIN_TICK_S = 1.0

# How long the web server may take to start listening.
WEB_START_S = 10.0


def start_web_server(config, status):
    """The web server in a background thread of the daemon; returns the uvicorn server."""
    import threading

    import uvicorn

    from .web import create_app

    app = create_app(config.database, status, config.http.base_url, config.http.apps)
    server = uvicorn.Server(uvicorn.Config(app, host=config.http.host, port=config.http.port,
                                           log_level="warning"))
    # Signals belong to the daemon, which stops the server itself.
    server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    # uvicorn ends its thread when it cannot listen (the port taken, an unknown host): the
    # daemon then stops before it polls, rather than run on without the pages it was asked
    # to serve.
    deadline = time.monotonic() + WEB_START_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise AggregatorError(f"cannot serve on {config.http.host}:{config.http.port} "
                              "([http] host and port): see the error above")
    click.echo(f"serving http://{config.http.host}:{config.http.port}/", err=True)
    return server


@main.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Address to listen on [default: [http] host, "
                                           "127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: [http] port, 8080].")
@handle_errors
def serve(config_path, host, port) -> None:
    """Serve story pages, feeds, health and metrics without fetching (a read-only replica).

    \b
    Pages:
        /              latest stories, each with the other outlets that covered it
        /story/ID      one story: every version, relation, similarity, canonical history
        /feed.atom     one entry per story (Atom 1.0); ?tag=T and ?source=NAME filter
        /feed.json     the same as JSON Feed 1.1
        /healthz /readyz /metrics
    \b
    Examples:
        aggregator serve
        aggregator serve --host 0.0.0.0 --port 9000
    """
    import uvicorn

    from .web import create_app

    config = load_config(config_path)
    store_at(config.database).close()  # create or migrate, so the replica has views to read
    app = create_app(config.database, None, config.http.base_url, config.http.apps)
    uvicorn.run(app, host=host or config.http.host, port=port or config.http.port,
                log_level="warning")


@main.command()
@CONFIG_OPTION
@click.argument("query")
@click.option("--limit", default=20, show_default=True, type=COUNT,
              help="At most this many stories.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@handle_errors
def search(config_path, query, limit, as_json) -> None:
    """Full-text search; finds stories, not copies (SQLite FTS5 query syntax).

    \b
    Examples:
        aggregator search Lavrov
        aggregator search '"security guarantees" AND Ukraine'
    """
    found, newest_only = open_store(config_path).search(query, limit)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        for story in found:
            click.echo(f"story {story['story_id']}: {story['title']}")
            click.echo(f"  {story['matching_articles']} of {story['article_count']} versions "
                       f"match; sources: {story['sources']}")
        if not found:
            click.echo("no story matches")
    if newest_only:
        # On standard error, so that --json stays one JSON document.
        click.echo(newest_only_note(), err=True)


def _since(value: str | None):
    if not value:
        return None
    try:
        from .store import utcnow

        return utcnow() - timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


@main.command()
@CONFIG_OPTION
@click.option("--since", default=None, help="Only stories seen in this period, e.g. 24h or 7d.")
@click.option("--limit", default=50, show_default=True, type=COUNT,
              help="At most this many stories.")
@click.option("--min-sources", default=1, show_default=True, type=COUNT,
              help="Only stories that this many sources or more report.")
@click.option("--starred", is_flag=True,
              help="Only the stories starred in a reading app (docs/apps.md).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@handle_errors
def stories(config_path, since, limit, min_sources, starred, as_json) -> None:
    """List stories, newest first, with their sources and members, and whether a reading
    app marked them read or starred.

    \b
    Examples:
        aggregator stories --since 24h
        aggregator stories --since 24h --min-sources 3
        aggregator stories --starred
        aggregator stories --json | jq '.[0].members'
    """
    store = open_store(config_path)
    found = store.stories(_since(since), limit, min_sources, starred)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    for story in found:
        click.echo(f"story {story['id']}: {story['title']}")
        marks = ", ".join(mark for mark in ("read", "starred") if story[mark])
        click.echo(f"  {counted(story['article_count'], 'article')} from "
                   f"{counted(story['source_count'], 'source')}, "
                   f"last seen {story['last_seen']}" + (f" ({marks})" if marks else ""))
        for member in story["members"]:
            similarity = "" if member["relation"] == "canonical" else \
                f" {member['similarity']:.2f}"
            click.echo(f"  - [{member['relation']}{similarity}] {member['source']}: "
                       f"{member['title']}")
    if not found:
        click.echo("no story matches" if since or min_sources > 1 or starred else
                   "no stories yet; run `aggregator run --once` first")


@main.command()
@CONFIG_OPTION
@click.argument("story_id", type=STORED_ID)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@handle_errors
def story(config_path, story_id, as_json) -> None:
    """Show one story: the canonical, every linked version, the canonical's history, and
    the close calls: the other stories its versions came closest to joining.

    \b
    Example:
        aggregator story 1
    """
    store = open_store(config_path)
    found = store.story(story_id)
    if found is None:
        raise AggregatorError(f"no story {story_id}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    click.echo(f"story {found['id']}: {found['title']}")
    click.echo(f"first seen {found['first_seen']}, last seen {found['last_seen']}, "
               f"{counted(found['article_count'], 'article')} from "
               f"{counted(found['source_count'], 'source')}")
    for member in found["members"]:
        click.echo(f"  article {member['article_id']} [{member['relation']}, similarity "
                   f"{member['similarity']:.3f}] {member['source']}: {member['title']}")
        click.echo(f"      {member['url']}  published {member['published']}")
    click.echo("canonical history:")
    for change in found["canonical_history"]:
        was = f" (was article {change['previous_article_id']})" \
            if change["previous_article_id"] else ""
        click.echo(f"  {change['changed_at']}: article {change['article_id']}{was}: "
                   f"{change['reason']}")
    if found["close_calls"]:
        click.echo("close calls (stories its versions nearly joined; `aggregator merge "
                   f"{story_id} ID` if one tells this story):")
    for close in found["close_calls"]:
        click.echo(f"  story {close['story_id']} ({close['article_count']} articles), "
                   f"{close['closeness']:.0%} of its threshold for article "
                   f"{close['article_id']}: {close['title']}")


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@handle_errors
def sources(config_path, as_json) -> None:
    """Show each source with its fetch state.

    \b
    Example:
        aggregator sources
    """
    config = load_config(config_path)
    store = store_at(config.database)
    store.sync_sources(config.sources)
    rows = store.sources_overview()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "disabled: " + row["disabled_reason"] if row["disabled_reason"] else \
            ("enabled" if row["enabled"] else "disabled in config")
        click.echo(f"{row['name']} ({state}{'' if row['in_config'] else ', not in config'})")
        click.echo(f"  url {row['url']}" + ("" if row["url"] == row["config_url"]
                                             else f" (config: {row['config_url']})"))
        click.echo(f"  last check {row['last_checked_at'] or 'never'}: "
                   f"{row['last_outcome'] or '-'} (HTTP {row['last_status'] or '-'}), "
                   f"last success {row['last_success_at'] or 'never'}")
        next_check = "only by run --once --all" if row["disabled_reason"] else \
            row["next_check_at"] or "now"
        click.echo(f"  errors in a row {row['consecutive_errors']}, next check {next_check}"
                   + (f", cooling down until {row['cooldown_until']}"
                      if row["cooldown_until"] else "")
                   + f", {row['articles']} articles")
        if row["last_error"]:
            click.echo(f"  last error: {row['last_error']}")


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@handle_errors
def webhooks(config_path, as_json) -> None:
    """Show each configured webhook with what it was sent: stories delivered, rejected and
    waiting (not delivered yet), the last attempt and the last error.

    \b
    Example:
        aggregator webhooks
    """
    from .notify import webhook_overview

    config = load_config(config_path, secrets=False)
    rows = webhook_overview(store_at(config.database).db.conn, config)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        tags = f", tags {', '.join(row['tags'])}" if row["tags"] else ""
        click.echo(f"{row['name']} (stories from {row['min_sources']} sources{tags})")
        click.echo(f"  {row['delivered']} delivered, {row['rejected']} rejected, "
                   f"{row['waiting']} waiting; last attempt {row['last_attempt_at'] or 'never'}"
                   f", since {row['since'] or 'the next pass'}")
        if row["last_error"]:
            click.echo(f"  last error: {row['last_error']}")
    if not rows:
        click.echo("no webhook is configured ([[webhooks]] in the configuration)")


@main.command()
@CONFIG_OPTION
@click.option("--no-signatures", is_flag=True,
              help="Skip recomputing every article's signatures (the slowest check).")
@handle_errors
def check(config_path, no_signatures) -> None:
    """Verify the store's invariants; exit 0 when all hold, 1 with a report otherwise.

    \b
    Checked: every article belongs to exactly one story; every story has exactly one
    canonical, one of its members; stored counts equal real counts; no two articles share an
    identity key; the term statistics agree with the articles; every stored signature matches
    its article's text.
    \b
    Example:
        aggregator check
    """
    from .check import check_store

    config = load_config(config_path)
    store = store_at(config.database)
    violations = check_store(store, config.clustering, signatures=not no_signatures)
    articles, stories_count = store.db.execute(
        "SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM stories)").fetchone()
    store.close()
    if not violations:
        click.echo(f"ok: {articles} articles in {stories_count} stories, every invariant holds")
        return
    for violation in violations:
        click.echo(f"violation: {violation.invariant}: {violation.detail}")
    sys.exit(1)


@main.command(name="import-opml")
@CONFIG_OPTION
@click.argument("opml_file", type=click.Path(exists=True, dir_okay=False))
@handle_errors
def import_opml_command(config_path, opml_file) -> None:
    """Add the feeds of an OPML file to the configuration (folders become tags).

    Feeds whose URL is configured already are skipped; the configuration file is changed only
    if the result is valid.  A running daemon picks the new sources up by itself, within a
    second.

    \b
    Example:
        aggregator import-opml subscriptions.opml
    """
    from .opml import import_opml

    path = str(config_file_path(config_path))
    added, skipped = import_opml(path, opml_file)
    click.echo(f"added {len(added)} sources to {path}; skipped {len(skipped)} already there")


def _feed_address(url: str) -> str:
    """A URL as typed, made fetchable: ``example.com`` means https, the ``feed:`` links of
    some sites are http(s), a local file is made absolute."""
    url = url.strip()
    if url.lower().startswith("feed:"):
        url = url[5:]
        url = f"http:{url}" if url.startswith("//") else url
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        return url
    if Path(url).exists():
        return str(Path(url).resolve())
    return f"https://{url}"


def _comparable(url: str) -> str:
    from .normalize import canonical_url

    return (canonical_url(url) or url) if url.startswith(("http://", "https://")) else url


@main.command()
@CONFIG_OPTION
@click.argument("url")
@click.option("--name", default=None, help="The source's name [default: the feed's title].")
@click.option("--tag", "tags", multiple=True, help="A tag for the source (repeatable).")
@click.option("--interval", default=None,
              help='How often to poll it, e.g. "15m", or "adaptive" [default: default_interval].')
@click.option("--priority", type=click.IntRange(-MAX_PRIORITY, MAX_PRIORITY), default=None,
              help="Higher wins the canonical election.")
@click.option("--full-text", is_flag=True,
              help="Fetch each new entry's page for its article text (summary-only feeds).")
@click.option("--username", default=None, help="HTTP Basic user name, for a private feed.")
@click.option("--password-env", default=None, metavar="VARIABLE",
              help="The environment variable that holds the password (read now, and by the "
                   "daemon: the password itself is not written).")
@click.option("--header", "headers", multiple=True, metavar='"NAME: VALUE"',
              help="An extra request header, e.g. an API key (repeatable).")
@click.option("--dry-run", is_flag=True, help="Find the feed and show its table; change nothing.")
@handle_errors
def add(config_path, url, name, tags, interval, priority, full_text, username, password_env,
        headers, dry_run) -> None:
    """Find the feed of URL (a feed, or a web page that names one) and add it as a source.

    A web page's advertised feeds (<link rel="alternate">) are the candidates; where it
    names none, the usual addresses (/feed, /rss.xml, /atom.xml...) are tried.  Every
    candidate is fetched and parsed under the configuration's limits and User-Agent.  When
    the page names several feeds, they are listed and nothing is added: add the one you
    want by its URL.  The configuration file is changed only if the result is valid; a
    running daemon polls the new source at once.  Exit status 0 when the source was added
    (or is configured already), 1 when no single feed was found.

    A private feed's credentials (--username with --password-env, --header) go with the
    requests to URL's own site only, as the daemon sends them, and into the source's table.

    \b
    Examples:
        aggregator add https://example.com/blog/
        aggregator add example.com/feed.xml --name "Example" --tag world --interval 15m
        FEED_PASSWORD=... aggregator add https://private.example/feed \\
            --username ann --password-env FEED_PASSWORD
    """
    from . import fetch as fetching
    from .config import append_sources, source_table, unique_source_name
    from .discover import find_feeds

    path = config_file_path(config_path)
    config = load_config(path, secrets=False)
    address = _feed_address(url)
    try:
        split_url(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    configured = {_comparable(s.url): s.name for s in config.sources}

    def already(feed_url: str) -> bool:
        if (known := configured.get(_comparable(feed_url))) is not None:
            click.echo(f"{feed_url} is configured already, as source {known!r}")
            return True
        return False

    if already(address):
        return
    credentials = _credentials(address, username, password_env, headers)
    limits = fetching.FetchLimits.of(config)
    last_request = [0.0]

    def get(target: str) -> fetching.FetchResult:
        # The daemon's spacing between two requests to one site holds here too.
        time.sleep(max(0.0, last_request[0] + config.min_host_interval_s - time.monotonic()))
        last_request[0] = time.monotonic()
        return fetching.fetch(client, target, target, None, None, limits, credentials)

    with fetching.make_client(limits) as client:
        try:
            discovery = find_feeds(address, get)
        except SourceError as error:
            raise AggregatorError(error.message if address in error.message
                                  else f"{address}: {error.message}") from None
    for rejected, why in discovery.rejected:
        click.echo(f"  not a feed: {rejected}: {why}", err=True)
    if not discovery.feeds:
        raise AggregatorError(f"{address}: a web page that names no feed, and none of the "
                              "usual feed addresses answered with one")
    if len(discovery.feeds) > 1:
        click.echo(f"{address} names {len(discovery.feeds)} feeds; add the one you want by "
                   "its URL:")
        for found in discovery.feeds:
            click.echo(f"  {found.url}  {found.title or '(no title)'} ({found.format}, "
                       f"{found.entries} entries)")
        sys.exit(1)
    found = discovery.feeds[0]
    if already(found.url):
        return
    # A feed's title may hold control characters, which no source name may (JSON Feed
    # titles are any JSON string): they go with the whitespace.
    title = "".join(c if c.isprintable() else " " for c in found.title or "")
    chosen = unique_source_name(" ".join((name or title).split()) or found.url,
                                set(configured.values()))
    # The daemon resolves a local path against the configuration's folder.
    written = (found.url if found.url.startswith(("http://", "https://", "file:")) else
               os.path.relpath(found.url, path.resolve().parent))
    table = source_table(chosen, written, interval=interval, priority=priority,
                         tags=list(tags), full_text=full_text or None, username=username,
                         password_env=password_env,
                         headers=dict(credentials.headers) if credentials else None)
    append_sources(path, [table], f"adding {found.url}", dry_run=dry_run)
    if dry_run:
        click.echo(table.strip("\n"))
        return
    click.echo(f"added source {chosen!r} to {path}: {found.url} ({found.format}, "
               f"{found.entries} entries; {discovery.how})")


def _credentials(address: str, username: str | None, password_env: str | None,
                 headers: tuple[str, ...]):
    """What ``add`` sends to the site of ``address`` while it looks for the feed: the
    credentials the source's table will name."""
    from .config import Credentials, header_problem

    if (username is None) != (password_env is None):
        raise click.UsageError("--username and --password-env come together")
    password = None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise click.UsageError(f"environment variable {password_env} is not set")
    pairs = []
    for header in headers:
        header_name, colon, value = header.partition(":")
        if not colon:
            raise click.UsageError(f'--header {header!r}: expected "NAME: VALUE"')
        if problem := header_problem(header_name.strip(), value.strip(), username is None):
            raise click.UsageError(f"--header {header!r}: {problem}")
        pairs.append((header_name.strip(), value.strip()))
    if username is None and not pairs:
        return None
    return Credentials(site=address, username=username, password=password,
                       headers=tuple(pairs))


def _change_source(config_path: str | None, name: str, enabled: bool | None) -> None:
    from .config import change_source

    path = config_file_path(config_path)
    changed = change_source(path, name, enabled)
    if enabled is None:
        click.echo(f"removed source {name!r} from {path}; its articles stay in the store, "
                   "and a running daemon stops polling it")
    elif not changed:
        click.echo(f"source {name!r} is {'enabled' if enabled else 'disabled'} already")
    else:
        click.echo(f"{'enabled' if enabled else 'disabled'} source {name!r} in {path}; a "
                   f"running daemon {'polls' if enabled else 'stops polling'} it within a "
                   "second (after the pass it may be in)")


@main.command()
@CONFIG_OPTION
@click.argument("name")
@handle_errors
def disable(config_path, name) -> None:
    """Stop polling the source NAME ("enabled = false" in its table); its articles and
    fetch state stay.

    \b
    Example:
        aggregator disable "Europe Brief"
    """
    _change_source(config_path, name, False)


@main.command()
@CONFIG_OPTION
@click.argument("name")
@handle_errors
def enable(config_path, name) -> None:
    """Poll the source NAME again ("enabled = true" in its table).

    \b
    Example:
        aggregator enable "Europe Brief"
    """
    _change_source(config_path, name, True)


@main.command()
@CONFIG_OPTION
@click.argument("name")
@handle_errors
def remove(config_path, name) -> None:
    """Take the source NAME out of the configuration file (its table, and the comment lines
    right above it); the rest of the file stays as it was.  Its articles stay in the store.

    \b
    Example:
        aggregator remove "Europe Brief"
    """
    _change_source(config_path, name, None)


@main.command()
@CONFIG_OPTION
@click.argument("destination", metavar="DEST")
@click.option("--compact", is_flag=True,
              help="Rewrite the copy without free pages (VACUUM INTO): smaller, slower.")
@click.option("--no-check", "skip_check", is_flag=True,
              help="Skip SQLite's quick_check of the copy.")
@handle_errors
def backup(config_path, destination, compact, skip_check) -> None:
    """Copy the database to DEST, consistently, while a daemon may be writing to it.

    DEST is a file (replaced only once the new copy is whole and checked) or a folder (the
    copy is named after the database and the time).  The copy holds every transaction
    committed before it began; it is readable by its owner alone.  `aggregator restore`
    puts it back.

    \b
    Examples:
        aggregator backup /backups/aggregator.db
        aggregator backup /backups/              # aggregator-20261207T120000Z.db
        aggregator backup /backups/ --compact
    """
    from .backup import back_up, backup_path
    from .store import utcnow

    config = load_config(config_path)
    report = back_up(config.database, backup_path(config.database, destination, utcnow()),
                     compact=compact, check=not skip_check)
    click.echo(f"backed up {config.database} to {report.path}: {report.size:,} bytes, "
               f"{report.articles:,} articles in {report.stories:,} stories, "
               f"{report.seconds:.1f} s")


@main.command()
@CONFIG_OPTION
@click.argument("backup_file", metavar="BACKUP")
@handle_errors
def restore(config_path, backup_file) -> None:
    """Put a backup (`aggregator backup`) in the place of the database.

    The backup is checked first (SQLite's quick_check; a store of this aggregator, of this
    version or an older one, which is migrated).  The database it replaces is kept beside
    it as NAME.before-restore-TIME.db.  Refused while a daemon runs on the store: stop it,
    and whatever else reads the database (Datasette, `aggregator serve`), first.

    \b
    Example:
        aggregator restore /backups/aggregator-20261207T120000Z.db
    """
    from .backup import restore as restore_backup
    from .store import MIGRATIONS, Store, utcnow

    config = load_config(config_path)
    with window_alone(config.database, "stop it, restore, then start it again"):
        report = restore_backup(config.database, Path(backup_file).expanduser(),
                                [name for name, _migration in MIGRATIONS], utcnow())
        store = Store(config.database)  # a backup of an older version is migrated here
        store.close()
    kept = f"; the database replaced is kept at {report.previous}" if report.previous else ""
    click.echo(f"restored {backup_file} to {config.database}: {report.articles:,} articles "
               f"in {report.stories:,} stories{kept}")


@main.command(name="export-opml")
@CONFIG_OPTION
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File [default: stdout].")
@handle_errors
def export_opml_command(config_path, output) -> None:
    """Write the configured sources as OPML 2.0 (tags as categories).

    \b
    Example:
        aggregator export-opml -o subscriptions.opml
    """
    from .opml import export_opml

    document = export_opml(load_config(config_path, secrets=False))
    if output:
        with open(output, "wb") as handle:
            handle.write(document)
    else:
        click.echo(document.decode("utf-8"), nl=False)


@main.command(name="explain")
@CONFIG_OPTION
@click.argument("article_id", type=STORED_ID)
@handle_errors
def explain(config_path, article_id) -> None:
    """Why an article joined its story, or why it started a new one.

    \b
    Example:
        aggregator explain 3
    """
    store = open_store(config_path)
    article = store.article(article_id)
    if article is None:
        raise AggregatorError(f"no article {article_id}")
    # A store filled by other means (the benchmarks' bulk stores) may hold none.
    decision = json.loads(article["decision"] or "null") or {
        "reason": "not recorded", "near_copies": [], "candidates": []}
    click.echo(f"article {article_id} ({article['source']}): {article['title']}")
    click.echo(f"story {article['story_id']}, relation now {article['relation']} "
               f"(similarity to the canonical {article['similarity']:.3f})")
    click.echo(f"decision when it arrived: {decision['reason']}")
    for correction_id, kind, applied_at in store.db.execute(
            "SELECT id, kind, applied_at FROM story_corrections WHERE applied_at IS NOT NULL "
            "AND error IS NULL AND ? IN (SELECT value FROM json_each(article_ids)) ORDER BY id",
            [article_id]):
        click.echo(f"moved by a reader since: correction {correction_id} ({kind}, "
                   f"{applied_at}; `aggregator corrections` lists it)")
    # No fingerprint: stored while clustering was off, and not reclustered since.
    salient_terms = json.loads(article["salient_terms"] or "[]")
    click.echo(f"salient terms: {', '.join(salient_terms) or '-'}")
    for copy in decision["near_copies"]:
        click.echo(f"  near-copy candidate: article {copy['article_id']} in story "
                   f"{copy['story_id']}, shingle Jaccard {copy['jaccard']:.3f}")
    if not decision["candidates"] and article["decision"]:
        click.echo("  no same-story candidate found by LSH")
    salient = set(salient_terms)
    canonicals = [c["canonical_article_id"] for c in decision["candidates"]
                  if c.get("canonical_article_id") is not None]
    their_terms = dict(zip(canonicals, store.salient_terms(canonicals), strict=True))
    for candidate in decision["candidates"]:
        # Decisions stored by earlier versions carry the shared terms themselves.
        shared = candidate.get("shared_terms") or sorted(
            salient.intersection(their_terms.get(candidate.get("canonical_article_id"), ())))
        held_back = candidate.get("held_back")
        score = (f"held back: {held_back}; cosine" if held_back else
                 f"score {candidate['score']:.3f} = cosine")
        click.echo(f"  candidate story {candidate['story_id']}: {score} "
                   f"{candidate['cosine']:.3f} x time {candidate['time_factor']:.3f} "
                   f"(threshold {candidate['threshold']:.3f}); shared salient terms: "
                   f"{', '.join(shared) or '-'}")


CORRECTION_WAIT_OPTION = click.option(
    "--wait", default="60s", show_default=True, metavar="DURATION",
    help="While a daemon runs: how long to wait for it to carry the correction out.")


@main.command()
@CONFIG_OPTION
@click.argument("article_ids", metavar="ARTICLE_ID...", nargs=-1, required=True,
                type=STORED_ID)
@CORRECTION_WAIT_OPTION
@handle_errors
def split(config_path, article_ids, wait) -> None:
    """Take articles out of a story that took them wrongly: they become a story of their
    own (together, when several are named; they must be one story's, and not all of it).

    The correction is kept: `aggregator recluster` makes it again.  Only stories in the
    clustering window can change.  While a daemon runs on the store, it carries the
    correction out within about a second (after the pass it may be in); this command waits
    for it (--wait).

    \b
    Examples:
        aggregator split 42
        aggregator split 42 43
    """
    config = load_config(config_path)
    store = store_at(config.database)
    missing = [a for a in article_ids if store.article(a) is None]
    if missing:
        raise AggregatorError(f"no article {missing[0]}")
    _correct(config, store, "split", list(dict.fromkeys(article_ids)), wait)


@main.command()
@CONFIG_OPTION
@click.argument("story_ids", metavar="STORY_ID STORY_ID...", nargs=-1, required=True,
                type=STORED_ID)
@CORRECTION_WAIT_OPTION
@handle_errors
def merge(config_path, story_ids, wait) -> None:
    """Make stories that tell the same story one: the oldest (the lowest id) takes the
    other stories' articles, and its canonical is elected among all of them.

    The correction is kept (by one article of each story): `aggregator recluster` makes it
    again.  Only stories in the clustering window can change.  While a daemon runs on the
    store, it carries the correction out within about a second (after the pass it may be
    in); this command waits for it (--wait).

    \b
    Example:
        aggregator merge 12 15
    """
    config = load_config(config_path)
    store = store_at(config.database)
    stories = list(dict.fromkeys(story_ids))
    if len(stories) < 2:
        raise click.UsageError("name two stories or more")
    canonicals = []
    for story_id in stories:
        row = store.db.execute("SELECT canonical_article_id FROM stories WHERE id = ?",
                               [story_id]).fetchone()
        if row is None:
            raise AggregatorError(f"no story {story_id}")
        canonicals.append(row[0])
    _correct(config, store, "merge", canonicals, wait)


def _correct(config: Config, store, kind: str, article_ids: list[int], wait: str) -> None:
    """Keep the correction, then carry it out here, or wait for the running daemon to."""
    from .pipeline import Aggregator
    from .retention import window_to_self
    from .store import utcnow

    try:
        wait_s = parse_duration(wait)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from None
    correction_id = store.request_correction(kind, article_ids, utcnow())
    with window_to_self(config.database) as alone:
        if alone:
            aggregator = Aggregator(config, store)
            try:
                aggregator.apply_corrections()
                applied_at, story_id, error = store.correction_state(correction_id)
            finally:
                aggregator.close()
        else:
            deadline = time.monotonic() + wait_s
            applied_at, story_id, error = store.correction_state(correction_id)
            while applied_at is None and time.monotonic() < deadline:
                time.sleep(CORRECTION_POLL_S)
                applied_at, story_id, error = store.correction_state(correction_id)
    if applied_at is None:
        click.echo(f"correction {correction_id} kept: the running daemon carries it out "
                   "once its pass in progress ends (`aggregator corrections` shows when)")
    elif error is not None:
        raise AggregatorError(f"correction {correction_id} not carried out: {error}")
    else:
        click.echo(f"correction {correction_id}: the articles are in story {story_id} now")


# How often a correction's command looks whether the daemon carried it out.
CORRECTION_POLL_S = 0.25


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="One JSON object a correction.")
@handle_errors
def corrections(config_path, as_json) -> None:
    """The corrections made with `aggregator split` and `merge`, oldest first: the
    articles named, when each was carried out and the story it gave, or why it could not
    be carried out.

    \b
    Example:
        aggregator corrections
    """
    store = open_store(config_path)
    rows = list(store.db.query("SELECT id, kind, article_ids, requested_at, applied_at, "
                               "story_id, error FROM story_corrections ORDER BY id"))
    for row in rows:
        row["article_ids"] = json.loads(row["article_ids"])
        if as_json:
            click.echo(json.dumps(row))
            continue
        named = ", ".join(map(str, row["article_ids"]))
        state = ("waiting for the daemon" if row["applied_at"] is None else
                 f"not carried out: {row['error']}" if row["error"] is not None else
                 f"carried out {row['applied_at']}: story {row['story_id']}")
        click.echo(f"{row['id']}: {row['kind']} of articles {named} "
                   f"(asked {row['requested_at']}); {state}")
    if not rows and not as_json:
        click.echo("no corrections")


def _since_date(value: str | None):
    """A date (2026-01-30, 2026-01-30T12:00:00Z) or a period back from now (7d, 24h)."""
    if not value:
        return None
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return _since(value)
    except click.BadParameter:
        raise click.BadParameter(f"{value!r} is neither a date (2026-01-30) nor a period "
                                 "(7d, 24h)", param_hint="--since") from None


@main.command()
@CONFIG_OPTION
@click.option("--since", default=None,
              help="Only stories with an article published since this date (2026-01-30) or "
                   "period (7d); default: every story.")
@handle_errors
def recluster(config_path, since) -> None:
    """Rebuild stories from stored articles with the current clustering settings.

    Use it after changing [clustering] in the configuration.  Stories with a member in the
    period are dissolved and their articles placed again, oldest first, in one transaction;
    dashboards see the old stories until it commits.  It refuses while a daemon runs on
    the store: the daemon's window would keep the stories it dissolves.

    \b
    Examples:
        aggregator recluster
        aggregator recluster --since 2026-01-01
        aggregator recluster --since 7d
    """
    from .pipeline import Aggregator

    config = load_config(config_path)
    start = _since_date(since)
    store = store_at(config.database)
    # Refused before the window is loaded, which takes seconds on a large store.
    with window_alone(config.database, "stop it, recluster, then start it again"):
        aggregator = Aggregator(config, store)
        try:
            with click.progressbar(length=1, label="reclustering", file=sys.stderr) as bar:
                def advance(done: int, total: int) -> None:
                    bar.length = total
                    bar.update(done - bar.pos)

                placed = aggregator.recluster(start, progress=advance)
            stories_now = aggregator.store.db.execute(
                "SELECT count(*) FROM stories").fetchone()[0]
        finally:
            aggregator.close()
    click.echo(f"placed {placed} articles again; {stories_now} stories in the database")


@main.command()
@CONFIG_OPTION
@click.option("--older-than", default=None, metavar="DURATION",
              help="The retention period for this run (90d, 26w): at least "
                   "clustering.window_days plus one day [default: the configuration's "
                   "retention].")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@handle_errors
def purge(config_path, older_than, dry_run) -> None:
    """Delete the stories that retention no longer keeps, with their articles.

    A story goes once none of its articles has been fetched for the retention period
    (`retention` in the configuration, or --older-than) and it has left the clustering
    window.  Its articles' identity keys are kept, so a feed that still lists an old entry
    does not bring it back as new; fetch attempts older than the period go too.  The daemon
    does the same once an hour when `retention` is set; this runs it now, in transactions
    of 500 stories, and refuses while a daemon runs on the store (the daemon's window may
    still hold a story that looks due).  The file keeps its size and reuses the freed
    pages; `sqlite3 FILE 'VACUUM'` with the daemon stopped gives them back.

    \b
    Examples:
        aggregator purge --older-than 180d --dry-run
        aggregator purge                     # with retention set in the configuration
    """
    from datetime import UTC, datetime

    from . import retention

    config = load_config(config_path)
    window_days = config.clustering.window_days
    retention_s = config.retention_s
    if older_than is not None:
        try:
            retention_s = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        if shortfall := too_short_a_retention(retention_s, config.clustering):
            raise click.BadParameter(f"must be {shortfall}", param_hint="--older-than")
    if not retention_s:
        raise click.UsageError(f"{config.path}: retention is 0 (keep everything): set "
                               "retention in the configuration or give --older-than")
    store = store_at(config.database)
    try:
        now = datetime.now(UTC)
        if dry_run:
            report = retention.count_due(store, store.db.conn, now, retention_s, window_days)
            click.echo(f"would delete {report}")
            return
        with window_alone(config.database, "it deletes what retention no longer keeps on "
                                           "its own, once an hour, when retention is set in "
                                           "its configuration"):
            report = retention.purge(
                store, now, retention_s, window_days,
                progress=lambda so_far: click.echo(f"deleted so far: {so_far}", err=True))
    finally:
        store.close()
    click.echo(f"deleted {report}")


@main.command(name="eval")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Take the clustering settings from this configuration file "
                   "[default: the built-in defaults].")
@click.option("--assignments", type=click.Path(dir_okay=False),
              help="Write id<TAB>story_id lines here (one file; with several inputs, the "
                   "input's name is added before the suffix).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one clustering setting for this run, e.g. "
                   "--set same_story_threshold=0.25.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@handle_errors
def evaluate(files, config_path, assignments, overrides, as_json) -> None:
    """Measure story clustering on labelled JSONL files (B-cubed and pairwise scores).

    Each file is streamed through the daemon's own pipeline into a temporary store, with the
    built-in clustering defaults, or the settings of the file given with --config.

    \b
    Examples:
        aggregator eval ../shared/eval/wikinews-fulltext-dev.jsonl
        aggregator eval data/*.jsonl --assignments out.tsv --set same_story_threshold=0.25
    """
    from dataclasses import replace
    from pathlib import Path

    from .evaluate import evaluate_file

    settings = ClusteringSettings()
    if config_path:
        settings = load_config(config_path).clustering
    settings = replace(settings, **_parse_overrides(overrides))
    if assignments and not Path(assignments).resolve().parent.is_dir():
        # Found out before the files are clustered, not after (minutes, on a large file).
        raise click.BadParameter(f"{Path(assignments).parent}: no such directory",
                                 param_hint="--assignments")
    for path in files:
        count = sum(1 for line in open(path, encoding="utf-8") if line.strip())
        with click.progressbar(length=count, label=Path(path).name, file=sys.stderr) as bar:
            last = [0]

            def advance(done: int, bar=bar, last=last) -> None:
                bar.update(done - last[0])
                last[0] = done

            result = evaluate_file(path, settings, progress=advance)
        if assignments:
            target = Path(assignments)
            if len(files) > 1:
                target = target.with_name(f"{target.stem}.{Path(path).stem}{target.suffix}")
            try:
                with open(target, "w", encoding="utf-8") as out:
                    for article_id, story_id in result.assignments.items():
                        out.write(f"{article_id}\t{story_id}\n")
            except OSError as exc:
                raise click.ClickException(f"{target}: cannot write the assignments: "
                                           f"{exc.strerror}") from None
        s = result.scores
        if as_json:
            click.echo(json.dumps({"file": result.file, "articles": result.articles,
                                   "stories_gold": result.stories_gold,
                                   "stories_found": result.stories_found,
                                   "seconds": round(result.seconds, 2), **s.as_dict()}))
            continue
        click.echo(f"{result.file}: {result.articles} articles, {result.stories_gold} gold "
                   f"stories, {result.stories_found} found, {result.seconds:.1f} s "
                   f"({result.articles / max(result.seconds, 1e-9):.0f} articles/s)")
        click.echo(f"  B-cubed   P {s.bcubed_precision:.4f}  R {s.bcubed_recall:.4f}  "
                   f"F1 {s.bcubed_f1:.4f}")
        click.echo(f"  pairwise  P {s.pairwise_precision:.4f}  R {s.pairwise_recall:.4f}  "
                   f"F1 {s.pairwise_f1:.4f}")


def _parse_overrides(pairs) -> dict:
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(ClusteringSettings)}
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE with KEY one of "
                                     f"{', '.join(fields)}", param_hint="--set")
        current = getattr(ClusteringSettings(), key)
        try:
            if isinstance(current, tuple):
                values[key] = [p for p in re.split(r"[,\s]+", raw) if p]
            elif isinstance(current, bool):
                # bool("false") is True: the words are read as the configuration writes them.
                values[key] = {"true": True, "false": False}[raw.strip().lower()]
            else:
                values[key] = type(current)(raw)
        except (KeyError, ValueError):
            raise click.BadParameter(f"{pair!r}: {raw!r} is not a {type(current).__name__}",
                                     param_hint="--set") from None
    try:
        # The same checks as the configuration's [clustering] table (ranges, finite numbers).
        check_clustering_table(values)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("--set: "), param_hint="--set") from None
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in values.items()}


if __name__ == "__main__":
    main()
