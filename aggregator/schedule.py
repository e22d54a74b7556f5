"""When to poll each source next (a pure function), and the APScheduler wiring of the daemon."""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .fetch import Outcome

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 24 * 3600.0
# How often the daemon asks whether a pass is wanted before its next tick (``Daemon``).
WATCH_S = 1.0
# Ticks without a pass (none running) after which the scheduler is taken to have stalled.
STALLED_TICKS = 2
MIN_INTERVAL_S = 60.0
# How far the last check may be ahead of the clock before the clock is taken to have been
# set back (``as_of_now``): less is a small correction, which only delays a poll as much.
CLOCK_SET_BACK_S = 60.0
MAX_INTERVAL_S = 24 * 3600.0
# How far the system clock may be ahead of the feeds' servers before it is taken to be wrong
# (``clock_too_far_ahead``): far more than servers' clocks are ever off, far less than any
# retention period.  The servers' opinions needed for that, one each, and kept.
CLOCK_AHEAD_S = 3600.0
CLOCK_SERVERS_NEEDED = 3
CLOCK_SERVERS_KEPT = 64


@dataclass(frozen=True)
class PollState:
    """What the schedule knows of a source after a poll."""

    interval_s: float
    consecutive_errors: int = 0


@dataclass(frozen=True)
class PollResponse:
    outcome: Outcome
    max_age_s: float | None = None
    retry_after_s: float | None = None
    ttl_s: float | None = None
    skip_hours: frozenset[int] = frozenset()
    skip_days: frozenset[str] = frozenset()


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def skip_forward(when: datetime, skip_hours: frozenset[int],
                 skip_days: frozenset[str]) -> datetime:
    """The first moment at or after ``when`` outside the feed's skipHours and skipDays (GMT).

    A feed that skips every hour or every day is taken as not meaning it.
    """
    if len(skip_hours) >= 24 or len(skip_days) >= 7 or not (skip_hours or skip_days):
        return when
    utc = when.astimezone(UTC)
    for _ in range(24 * 7):
        if utc.hour not in skip_hours and _WEEKDAYS[utc.weekday()] not in skip_days:
            return utc.astimezone(when.tzinfo)
        utc = (utc + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return when


def next_check_at(now: datetime, state: PollState, response: PollResponse,
                  jitter: float = 0.0) -> datetime:
    """The time of the next poll.

    Success or not-modified: the largest of the interval, the feed's ``<ttl>`` and the
    server's Cache-Control max-age (or Expires), clamped to [1 min, 24 h], then moved past the
    feed's skipHours and skipDays.  Errors: the interval times
    2^(errors-1), capped at 24 h, so a broken feed is retried less and less often but never
    dropped.  Throttling: at least what Retry-After asks.  ``jitter`` in [0, 1) spreads polls
    by up to 10% so that feeds configured alike do not all fire together.
    """
    interval = max(MIN_INTERVAL_S, state.interval_s)
    if response.outcome in (Outcome.OK, Outcome.NOT_MODIFIED):
        delay = max(interval, response.ttl_s or 0.0, response.max_age_s or 0.0)
        delay = min(delay, max(MAX_INTERVAL_S, interval))
    else:
        errors = max(1, state.consecutive_errors)
        delay = min(interval * 2 ** (errors - 1), MAX_BACKOFF_S)
    if response.retry_after_s is not None:
        delay = max(delay, min(response.retry_after_s, MAX_BACKOFF_S))
    when = now + timedelta(seconds=delay * (1.0 + 0.1 * jitter))
    return skip_forward(when, response.skip_hours, response.skip_days)


def set_back_since(stamped: datetime, now: datetime) -> bool:
    """Whether a time the daemon stamped is more than ``CLOCK_SET_BACK_S`` ahead of
    ``now``: the system clock has been set back since."""
    return (stamped - now).total_seconds() > CLOCK_SET_BACK_S


def as_of_now(now: datetime, last_checked_at: datetime | None,
              when: datetime | None) -> datetime | None:
    """``when`` (a source's next check, or the end of its cooldown), set at its last check:
    as stored, unless that check is more than ``CLOCK_SET_BACK_S`` later than ``now``: the
    system clock has been set back since, and how long ago the check really was cannot be
    told.  Then ``now``: a clock set back a year must not stop a feed for a year.  The
    source is polled at the next pass (once sooner than its wait, perhaps), and its times are
    set again from the clock as it is."""
    if when is None or last_checked_at is None or not set_back_since(last_checked_at, now):
        return when
    return min(when, now)


def upkeep_due(last_done: datetime | None, now: datetime, every: timedelta) -> bool:
    """Whether an upkeep done every ``every`` (retention, template lines) is due at ``now``,
    last done at ``last_done``: also when that is more than ``CLOCK_SET_BACK_S`` ahead of
    ``now``, so that a clock set back does not hold it back by as much."""
    return (last_done is None or set_back_since(last_done, now)
            or now - last_done >= every)


def clock_ahead_of_servers(offsets: Iterable[float],
                           needed: int = CLOCK_SERVERS_NEEDED) -> float | None:
    """How far the system clock is ahead of the feeds' servers (negative: behind), from
    each server's ``offsets`` (the local time less its ``Date`` header, one per server): their
    median, which a few servers with wrong clocks do not move; None with fewer than
    ``needed``, too few to tell the local clock from theirs."""
    values = list(offsets)
    return statistics.median(values) if len(values) >= max(1, needed) else None


def clock_too_far_ahead(ahead_s: float | None) -> bool:
    """Whether the system clock is so far ahead of the servers (``clock_ahead_of_servers``)
    that times counted back from it cannot be trusted: what retention would delete as older
    than its period is then only older than the clock says."""
    return ahead_s is not None and ahead_s > CLOCK_AHEAD_S


class ServerClocks:
    """The latest clock offset (``FetchResult.clock_ahead_s``) of each of the last
    ``CLOCK_SERVERS_KEPT`` servers (origins) to answer; fetch threads record, the writer
    asks.  An offset stays until its server answers again: after the clock is corrected, each
    server's opinion changes as it is polled again."""

    def __init__(self, kept: int = CLOCK_SERVERS_KEPT):
        self._kept = kept
        self._offsets: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, server: Hashable, ahead_s: float | None) -> None:
        """``server``: its origin, as ``fetch.site_of`` gives it."""
        if ahead_s is None:
            return
        with self._lock:
            self._offsets[server] = ahead_s
            self._offsets.move_to_end(server)
            while len(self._offsets) > self._kept:
                self._offsets.popitem(last=False)

    def ahead_s(self) -> tuple[float | None, int]:
        """``clock_ahead_of_servers`` over the servers kept, and how many there are."""
        with self._lock:
            offsets = list(self._offsets.values())
        return clock_ahead_of_servers(offsets), len(offsets)


def adaptive_interval(entries_last_week: int, min_s: float, max_s: float) -> float:
    """Poll about as often as the feed publishes: a week divided by last week's entries.

    A feed with 70 entries a week is polled every 2.4 h, a quiet one once a day or less
    (bounded by ``min_s`` and ``max_s``), like Miniflux's entry-frequency scheduler.
    """
    if entries_last_week <= 0:
        return max_s
    return min(max_s, max(min_s, 7 * 86400.0 / entries_last_week))


def random_jitter() -> float:
    return random.random()


class Ticks(IntervalTrigger):
    """APScheduler's interval trigger, except that after a tick that the system clock has
    left far behind, the next tick is the first from now.  APScheduler lists every tick
    missed before it coalesces them into one run (``Job._get_run_times``): a clock set
    forward ten years (a machine without a battery-backed clock, set right as it boots) is
    ten million ticks of 30 s, minutes in which the scheduler runs nothing."""

    def get_next_fire_time(self, previous_fire_time, now):
        if previous_fire_time is not None and \
                (now - previous_fire_time).total_seconds() > 2 * self.interval_length:
            previous_fire_time = None  # counted from the start, as a new trigger is
        return super().get_next_fire_time(previous_fire_time, now)


class Daemon:
    """Runs ``run_pass`` on an APScheduler interval until stopped.

    Each pass polls the sources that are due; the pass runs in the scheduler's single worker
    thread (or, woken by ``wake``, in a thread of its own), one at a time: passes never
    overlap.  A signal handler calls ``stop``: the pass in progress
    finishes its current write and stops, and ``start`` returns only then, so that the
    caller never closes the store under a write.

    APScheduler keeps time by the system clock: set back an hour, it would wait an hour for
    its next tick (agronholm/apscheduler#351, #752).  A watch on the monotonic clock sees
    ``STALLED_TICKS`` ticks go by without a pass, and starts the schedule again from now.
    Set forward, the ticks it missed are not listed one by one (``Ticks``).
    """

    def __init__(self, run_pass: Callable[[threading.Event], None], tick_s: float = 30.0,
                 wanted: Callable[[], bool] | None = None):
        """``wanted``: asked every ``WATCH_S`` whether a pass is wanted before the next tick
        (a reader's correction kept by another process); if so the daemon wakes."""
        self.run_pass = run_pass
        self.wanted = wanted
        self.tick_s = tick_s
        self.stopping = threading.Event()
        self._last_pass = time.monotonic()  # when the latest pass ended
        self._passing = threading.Lock()
        self._woken = threading.Lock()  # held while a wake is on its way
        self.scheduler = BlockingScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                         "misfire_grace_time": None})
        self.scheduler.add_job(self._tick, Ticks(seconds=tick_s), id="poll",
                               next_run_time=datetime.now().astimezone())

    def _tick(self, woken: bool = False) -> None:
        with self._passing:
            if woken:
                self._woken.release()  # a wake from now on may find a changed file again
            if self.stopping.is_set():
                return
            try:
                self.run_pass(self.stopping)
            except Exception:  # a pass must never kill the daemon
                log.exception("pass failed; the daemon goes on")
            finally:
                self._last_pass = time.monotonic()

    def start(self) -> None:
        """Run passes until ``stop``; return once the pass in progress has finished."""
        # A thread, not a scheduler job: a job would log two lines a second at -v, and the
        # watch must not depend on the scheduler it watches.
        watching = threading.Thread(target=self._watch, name="watch", daemon=True)
        watching.start()
        self.scheduler.start()
        # The scheduler stops without waiting for its worker thread (``stop`` runs in a
        # signal handler, which must not block); the pass is waited for here instead.
        with self._passing:
            pass
        if watching.is_alive():  # so that the caller may close what ``wanted`` reads
            watching.join()

    def wake(self) -> None:
        """A pass now instead of at the next tick (``wanted`` said so: a changed
        configuration, SIGHUP, a reader's correction; or the schedule was restarted), in a
        thread of its own, so that any thread may ask, the scheduler's included.  A pass in
        progress ends first; wakes asked for before the woken pass starts make one."""
        if self._woken.acquire(blocking=False):
            threading.Thread(target=self._tick, args=(True,), name="wake", daemon=True).start()

    def _watch(self) -> None:
        failing = False
        while not self.stopping.wait(WATCH_S):
            try:
                if self._stalled():
                    self._restart_schedule()
                if self.wanted is not None and self.wanted():
                    self.wake()
                failing = False
            except Exception:  # the ticks go on regardless
                if not failing:
                    log.exception("the watch between ticks failed; the daemon goes on "
                                  "ticking")
                failing = True

    def _stalled(self) -> bool:
        return (not self._passing.locked()
                and time.monotonic() - self._last_pass > STALLED_TICKS * self.tick_s + WATCH_S)

    def _restart_schedule(self) -> None:
        log.warning("no pass for %.0f s (ticks every %.0f s): the scheduler waits for a time "
                    "that the system clock has left behind (set back?); ticking again from "
                    "now", time.monotonic() - self._last_pass, self.tick_s)
        self._last_pass = time.monotonic()  # one warning, not one a second
        try:
            self.scheduler.reschedule_job("poll", trigger=Ticks(seconds=self.tick_s))
        except (JobLookupError, SchedulerNotRunningError):
            return  # stopping
        self.wake()

    def stop(self) -> None:
        self.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
