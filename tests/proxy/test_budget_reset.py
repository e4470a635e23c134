"""When limits reset: the `Retry-After` of a refusal, and the counter a charge lands in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from llm_gateway_proxy.errors import BudgetExhausted
from llm_gateway_proxy.keys import Limits
from llm_gateway_proxy.ratelimit import PREFIX, _counter_keys, _reset_seconds

HOUR = 3600
DAY = 24 * HOUR


def at(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (at(2026, 2, 28, 12), 12 * HOUR),  # the issue: 84 h was reported (31-day months)
        (at(2024, 2, 28, 12), DAY + 12 * HOUR),  # a leap year's February has a 29th
        (at(2024, 2, 29, 23, 59, 59), 1),
        (at(2026, 12, 31, 18), 6 * HOUR),  # December rolls into January of the next year
        (at(2026, 4, 30), DAY),  # a 30-day month
        (at(2026, 1, 1), 31 * DAY),  # the very first instant of a month: a whole month left
        (at(2026, 3, 31, 23, 59, 59, 500_000), 1),  # part of a second left is a second
    ],
)
def test_a_monthly_budget_resets_at_the_first_instant_of_the_next_calendar_month(
    now: datetime, seconds: int
) -> None:
    assert _reset_seconds("budget", Limits(budget_period="monthly"), now) == seconds


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (at(2026, 2, 28, 12), 12 * HOUR),
        (at(2026, 12, 31, 23, 30), 30 * 60),
        (at(2026, 6, 1), DAY),
        (datetime(2026, 6, 1, 23, tzinfo=timezone(timedelta(hours=2))), 3 * HOUR),  # 21:00 UTC
    ],
)
def test_a_daily_budget_resets_at_the_next_midnight_utc(now: datetime, seconds: int) -> None:
    assert _reset_seconds("budget", Limits(budget_period="daily"), now) == seconds


def test_minute_windows_reset_at_the_next_minute_and_a_total_budget_never() -> None:
    now = at(2026, 2, 28, 12, 0, 45)
    assert _reset_seconds("requests", Limits(), now) == 15
    assert _reset_seconds("tokens", Limits(), now) == 15
    assert _reset_seconds("budget", Limits(budget_period="total"), now) == 0


def test_the_budget_period_is_the_one_the_minute_falls_in() -> None:
    """The counters of one request are all stamped from one instant: a minute before midnight
    is still that day (and month), whatever the clock says by the time the keys are built."""
    minute = int(at(2026, 12, 31, 23, 59).timestamp() // 60)
    rpm, tpm, daily, spend = _counter_keys("key:k1", Limits(budget_period="daily"), minute)
    assert spend == f"{PREFIX}key:k1:spend:20261231"
    assert (rpm, tpm) == (f"{PREFIX}key:k1:rpm:{minute}", f"{PREFIX}key:k1:tpm:{minute}")
    assert daily == f"{PREFIX}key:k1:budget:20261231"
    assert _counter_keys("key:k1", Limits(), minute)[2] == f"{PREFIX}key:k1:budget:202612"
    next_day = _counter_keys("key:k1", Limits(budget_period="daily"), minute + 1)[2]
    assert next_day == f"{PREFIX}key:k1:budget:20270101"


def test_a_spent_total_budget_says_no_retry() -> None:
    total = BudgetExhausted("spent", limit="budget", limit_value=5, reset_seconds=0)
    names = {name for name, _ in total.headers()}
    assert b"retry-after" not in names and b"x-ratelimit-limit-tokens" in names
    monthly = BudgetExhausted("spent", limit="budget", limit_value=5, reset_seconds=3600)
    assert (b"retry-after", b"3600") in monthly.headers()
