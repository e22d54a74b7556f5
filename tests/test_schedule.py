from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.fetch import Outcome
from aggregator.schedule import PollResponse, PollState, next_check_at

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
