from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from aggregator.fetch import Outcome
from aggregator.schedule import (
    PollResponse,
    PollState,
    ServerClocks,
    as_of_now,
    clock_ahead_of_servers,
    clock_too_far_ahead,
    next_check_at,
    upkeep_due,
)

NOW = datetime(2026, 1, 30, 12, 0, tzinfo=UTC)
H = 3600.0


@pytest.mark.parametrize(("state", "response", "delay_s"), [
    (PollState(1800), PollResponse(Outcome.OK), 1800),
    (PollState(1800), PollResponse(Outcome.NOT_MODIFIED), 1800),
    (PollState(1800), PollResponse(Outcome.OK, max_age_s=3 * H), 3 * H),
    (PollState(1800), PollResponse(Outcome.OK, max_age_s=60), 1800),
    (PollState(1800), PollResponse(Outcome.OK, ttl_s=2 * H), 2 * H),
    (PollState(1800), PollResponse(Outcome.OK, max_age_s=10 * 24 * H), 24 * H),
    (PollState(10), PollResponse(Outcome.OK), 60),
    (PollState(1800, 1), PollResponse(Outcome.ERROR), 1800),
    (PollState(1800, 2), PollResponse(Outcome.ERROR), 3600),
    (PollState(1800, 4), PollResponse(Outcome.ERROR), 4 * 3600),
    (PollState(1800, 30), PollResponse(Outcome.ERROR), 24 * H),
    (PollState(1800, 1), PollResponse(Outcome.THROTTLED, retry_after_s=5 * H), 5 * H),
    (PollState(1800, 1), PollResponse(Outcome.THROTTLED, retry_after_s=60), 1800),
    (PollState(1800, 1), PollResponse(Outcome.THROTTLED, retry_after_s=99 * 24 * H), 24 * H),
])
def test_next_check_at(state, response, delay_s):
    assert next_check_at(NOW, state, response) == NOW + timedelta(seconds=delay_s)


def test_jitter_spreads_by_at_most_ten_percent():
    plain = next_check_at(NOW, PollState(1000), PollResponse(Outcome.OK))
    jittered = next_check_at(NOW, PollState(1000), PollResponse(Outcome.OK), jitter=0.999)
    assert plain < jittered < plain + timedelta(seconds=100)


MONDAY_NOON = datetime(2026, 2, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("hours", "days", "expected"), [
    (frozenset(), frozenset(), MONDAY_NOON + timedelta(hours=1)),
    (frozenset({13}), frozenset(), datetime(2026, 2, 2, 14, 0, tzinfo=UTC)),
    (frozenset({13, 14, 15}), frozenset(), datetime(2026, 2, 2, 16, 0, tzinfo=UTC)),
    (frozenset(), frozenset({"monday"}), datetime(2026, 2, 3, 0, 0, tzinfo=UTC)),
    (frozenset({0, 1}), frozenset({"monday"}), datetime(2026, 2, 3, 2, 0, tzinfo=UTC)),
    (frozenset(range(24)), frozenset(), MONDAY_NOON + timedelta(hours=1)),
    (frozenset(), frozenset({"saturday"}), MONDAY_NOON + timedelta(hours=1)),
])
def test_skip_hours_and_days_are_honoured(hours, days, expected):
    response = PollResponse(Outcome.OK, skip_hours=hours, skip_days=days)
    assert next_check_at(MONDAY_NOON, PollState(3600), response) == expected


def test_skip_schedule_is_read_from_rss():
    from aggregator.parse import parse_feed

    body = (b"<rss version='2.0'><channel><title>t</title><skipHours><hour>0</hour>"
            b"<hour>1</hour><hour>24</hour><hour>99</hour></skipHours><skipDays><day>Sunday"
            b"</day><day>Funday</day></skipDays><item><title>x</title></item></channel></rss>")
    feed = parse_feed(body, "s")
    assert feed.skip_hours == frozenset({0, 1}) and feed.skip_days == frozenset({"sunday"})


M = timedelta(minutes=1)


@pytest.mark.parametrize(("last_checked", "when", "expected"), [
    (NOW - 10 * M, NOW + 20 * M, NOW + 20 * M),   # the clock as it was: as stored
    (NOW, NOW + 30 * M, NOW + 30 * M),            # checked this very second
    (NOW - 60 * M, NOW - 30 * M, NOW - 30 * M),   # overdue
    (None, NOW + 30 * M, NOW + 30 * M),           # never checked (a new source)
    (NOW - 10 * M, None, None),                   # no next check, no cooldown
    # Set back a minute or less (a small correction): as stored, a minute late at most.
    (NOW + M, NOW + 31 * M, NOW + 31 * M),
    # Set back more, an hour after a check that set a 30-minute wait: due now, not in 90
    # minutes (how long ago the check really was cannot be told).
    (NOW + 60 * M, NOW + 90 * M, NOW),
    # ... and a year: not in a year.
    (NOW + timedelta(days=365), NOW + timedelta(days=365) + 30 * M, NOW),
    (NOW + 2 * M, NOW - 5 * M, NOW - 5 * M),      # never later than stored
])
def test_times_set_before_the_clock_was_set_back_are_due_now(last_checked, when, expected):
    assert as_of_now(NOW, last_checked, when) == expected


@pytest.mark.parametrize(("last_done", "now", "expected"), [
    (None, NOW, True),                                    # never done
    (NOW - timedelta(minutes=59), NOW, False),
    (NOW - timedelta(hours=1), NOW, True),
    (NOW - timedelta(days=300), NOW, True),
    (NOW + timedelta(seconds=30), NOW, False),            # a small correction of the clock
    (NOW + timedelta(days=365), NOW, True),               # the clock set back a year
])
def test_upkeep_is_due_hourly_and_not_held_back_by_a_clock_set_back(last_done, now, expected):
    assert upkeep_due(last_done, now, timedelta(hours=1)) is expected


@pytest.mark.parametrize(("offsets", "expected"), [
    ([], None),
    ([0.4, 0.9], None),                                   # too few to tell whose clock is off
    ([0.4, 0.9, -0.2], 0.4),
    ([365 * 86400.0, 365 * 86400.0 + 1, 365 * 86400.0 - 2], 365 * 86400.0),
    # Two servers with wrong clocks (one years behind, one a day ahead) do not move it.
    ([1.0, 2.0, 3.0, 9e8, -86400.0], 2.0),
    ([-7200.0, -7201.0, -7199.0, -7200.5], -7200.25),     # this clock behind theirs
])
def test_the_clock_is_judged_by_the_median_of_the_servers(offsets, expected):
    assert clock_ahead_of_servers(offsets) == expected


@pytest.mark.parametrize(("ahead_s", "expected"), [
    (None, False), (-365 * 86400.0, False), (0.0, False), (3600.0, False), (3601.0, True),
    (365 * 86400.0, True),
])
def test_only_a_clock_well_ahead_of_the_servers_is_too_far_ahead(ahead_s, expected):
    assert clock_too_far_ahead(ahead_s) is expected


def test_server_clocks_keep_each_servers_latest_offset_and_the_latest_servers():
    clocks = ServerClocks(kept=3)
    assert clocks.ahead_s() == (None, 0)
    clocks.record("http a.example 80", 9000.0)
    clocks.record("http b.example 80", 9100.0)
    clocks.record("http a.example 80", None)              # no Date: nothing said
    assert clocks.ahead_s() == (None, 2)
    clocks.record("http c.example 80", 8900.0)
    assert clocks.ahead_s() == (9000.0, 3)
    # Corrected: each server's opinion changes as it answers again; the oldest one to
    # answer leaves when a fourth server does.
    clocks.record("http a.example 80", 0.5)
    clocks.record("http b.example 80", 0.2)
    assert clocks.ahead_s() == (0.5, 3)
    clocks.record("http d.example 80", 0.1)
    assert clocks.ahead_s() == (0.2, 3)


@pytest.mark.parametrize(("entries", "expected"), [
    (0, 86400.0), (1, 86400.0), (7, 86400.0), (70, 8640.0), (100000, 300.0),
])
def test_adaptive_interval_follows_how_often_the_feed_publishes(entries, expected):
    from aggregator.schedule import adaptive_interval

    assert adaptive_interval(entries, 300.0, 86400.0) == pytest.approx(expected)


def test_adaptive_source_is_scheduled_by_its_publishing_rate(tmp_path):
    from conftest import write_config

    from aggregator.config import load_config
    from aggregator.pipeline import Aggregator
    from aggregator.store import from_iso

    now = datetime.now(UTC)
    items = "".join(
        f"<item><title>Update {n} on the harbour works</title><link>https://a.example/{n}"
        f"</link><pubDate>{(now - timedelta(hours=n * 5)).strftime('%a, %d %b %Y %H:%M:%S')}"
        f" +0000</pubDate><description>Crews finished section {n} of the quay wall "
        f"repairs.</description></item>" for n in range(28))
    feed = tmp_path / "busy.xml"
    feed.write_text(f"<rss version='2.0'><channel><title>b</title>{items}</channel></rss>")
    config = write_config(tmp_path / "adaptive.toml",
                          [{"name": "busy", "url": str(feed), "interval": "adaptive"}])
    aggregator = Aggregator(load_config(config, environ={}))
    aggregator.run_pass()
    row = aggregator.store.source("busy")
    delay = row.next_check_at - from_iso(aggregator.store.sources_overview()[0]
                                         ["last_checked_at"])
    # 28 entries in the week: every 6 hours, plus up to 10% jitter.
    assert timedelta(hours=6) <= delay <= timedelta(hours=6.7)
    aggregator.close()


@contextmanager
def running(daemon) -> Iterator[threading.Thread]:
    """``daemon`` started in a thread of its own, stopped on the way out; a daemon thread,
    so that a scheduler stuck in a failing test does not hold the test process at exit."""
    thread = threading.Thread(target=daemon.start, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        daemon.stop()
        thread.join(10)


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_daemon_returns_only_once_the_pass_in_progress_has_finished():
    from aggregator.schedule import Daemon

    entered, finished = threading.Event(), []

    def slow_pass(stopping):
        entered.set()
        time.sleep(0.3)  # a write that must not have the store closed under it
        finished.append(stopping.is_set())

    daemon = Daemon(slow_pass, tick_s=3600)
    stopper = threading.Thread(target=lambda: (entered.wait(10), daemon.stop()))
    stopper.start()
    daemon.start()
    stopper.join()
    assert finished == [True]


def test_a_wake_makes_a_pass_now_after_the_one_in_progress_and_wakes_before_it_make_one():
    """A wake (a changed configuration, a reader's correction) makes a pass at once, not at
    the next tick (an hour here)."""
    from aggregator.schedule import Daemon

    passes: list[float] = []
    in_first, go_on = threading.Event(), threading.Event()

    def run_pass(stopping):
        passes.append(time.monotonic())
        if len(passes) == 1:
            in_first.set()
            go_on.wait(10)

    def count_reaches(count: int) -> bool:
        return within(10, lambda: len(passes) >= count) and len(passes) == count

    daemon = Daemon(run_pass, tick_s=3600)
    try:
        with running(daemon) as thread:
            assert in_first.wait(10)
            for _ in range(3):  # while the first pass runs: one pass after it, not three
                daemon.wake()
            time.sleep(0.2)
            assert len(passes) == 1  # passes never overlap
            go_on.set()
            assert count_reaches(2)
            time.sleep(0.3)
            assert len(passes) == 2
            daemon.wake()  # once the woken pass has started, a wake makes a pass of its own
            assert count_reaches(3)
    finally:
        go_on.set()
    assert not thread.is_alive()
    daemon.wake()  # stopped: no pass
    time.sleep(0.2)
    assert len(passes) == 3


def test_the_daemon_asks_whether_a_pass_is_wanted_before_the_next_tick():
    from aggregator.schedule import WATCH_S, Daemon

    passes: list[float] = []
    asked: list[float] = []

    def wanted() -> bool:
        asked.append(time.monotonic())
        return len(asked) == 2  # the second look finds something (a correction kept)

    daemon = Daemon(lambda stopping: passes.append(time.monotonic()), tick_s=3600,
                    wanted=wanted)
    with running(daemon) as thread:
        within(10, lambda: len(asked) >= 4)
        assert len(passes) == 2  # the first tick's, then the one wanted
        assert asked[1] <= passes[1] < asked[1] + 2
        assert asked[1] - asked[0] >= WATCH_S * 0.9
    assert not thread.is_alive()  # the watch ends with the daemon


@pytest.fixture
def scheduler_clock(monkeypatch):
    """The system clock as APScheduler, its trigger and the daemon read it: set back by
    ``SetBack.by`` (forward where that is negative)."""
    import apscheduler.schedulers.base
    import apscheduler.triggers.interval

    from aggregator import schedule

    class SetBack(datetime):
        by = timedelta(0)

        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - cls.by

    for module in (apscheduler.schedulers.base, apscheduler.triggers.interval, schedule):
        monkeypatch.setattr(module, "datetime", SetBack)
    return SetBack


def test_the_daemon_ticks_again_when_the_system_clock_is_set_back(scheduler_clock, caplog):
    """APScheduler reads the system clock: set back an hour, it would wait an hour for its
    next tick.  The clock is set back here as the scheduler and its trigger see it."""
    from aggregator.schedule import STALLED_TICKS, WATCH_S, Daemon

    SetBack = scheduler_clock
    passes: list[float] = []
    daemon = Daemon(lambda stopping: passes.append(time.monotonic()), tick_s=1)
    with running(daemon):
        assert within(10, lambda: len(passes) >= 2)  # ticking every second
        SetBack.by = timedelta(hours=1)
        set_back = time.monotonic()
        assert within(10, lambda: len(passes) >= 5), \
            "the daemon waits for the hour the clock went back"
        # Seen within the ticks it allows, then ticking on.
        assert passes[3] - set_back < STALLED_TICKS * 1 + 5 * WATCH_S
    assert "the system clock has left behind" in caplog.text


def test_the_daemon_ticks_on_when_the_system_clock_is_set_forward(scheduler_clock):
    """APScheduler lists every tick missed before it coalesces them, about 1.3 us each
    here: 60 days of one-second ticks held its scheduler for 7 s or more, no pass meanwhile
    (ten years of 30-second ticks, 14 s; from 1970 to now, over a minute)."""
    from aggregator.schedule import Daemon

    passes: list[float] = []
    daemon = Daemon(lambda stopping: passes.append(time.monotonic()), tick_s=1)
    with running(daemon):
        assert within(10, lambda: len(passes) >= 2)
        scheduler_clock.by = -timedelta(days=60)
        count = len(passes)
        assert within(4, lambda: len(passes) >= count + 3), "the scheduler lists 60 days"


@pytest.mark.parametrize(("behind", "listed"), [
    (timedelta(seconds=10), 1),            # on time
    (timedelta(seconds=45), 2),            # one tick missed: listed, then coalesced
    (timedelta(seconds=61), 1),            # over two ticks behind: from now
    (timedelta(minutes=5), 2),             # far behind: the next tick from now
    (timedelta(days=3652), 2),
])
def test_ticks_far_behind_the_clock_are_not_listed_one_by_one(behind, listed):
    from aggregator.schedule import Ticks

    start = NOW - behind
    ticks = Ticks(seconds=30, start_date=start)
    # As APScheduler's Job._get_run_times lists the ticks due at NOW.
    due, tick = [], start
    while tick <= NOW and len(due) <= 10:
        due.append(tick)
        tick = ticks.get_next_fire_time(tick, NOW)
    assert len(due) == listed
    assert NOW < tick <= NOW + timedelta(seconds=30)
