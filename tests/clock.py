"""The suite's time: fixed moments, and the one place the wall clock may be read.

No test reads the wall clock for its expectations. Tests run at a fixed "now": the
simulator's `--now` (or `SimulatorServer(now=...)`) and the exporter's injectable clock
(`App(clock=...)`), both set from the moments below, so a test gives the same result on
any day it runs.

Two kinds of test cannot be fixed that way, and take their time from `real_now()` here:
- those against a real Prometheus (or Alertmanager): its clock cannot be faked, so the
  stack fixtures read the wall clock once, pass that value as the simulator's `--now`, and
  every expectation derives from that one value (the simulator's data lies relative to it:
  it starts 60 days or more before, so the previous month is always whole);
- those that measure schedules (retries, backoff), whose clock must tick: the simulator's
  clock is shifted to start at a fixed moment and ticks from there (`real_offset`).

`tests/test_clock.py` fails on any other read of the wall clock under tests/, and
`tests/integration/test_calendar.py` runs the exporter at each of `CALENDAR`'s moments.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

UTC = dt.UTC


@dataclass(frozen=True)
class Moment:
    """A fixed "now" and the time zone the exporter is configured with at that moment."""

    name: str
    at: dt.datetime  # aware
    tz: str = "UTC"

    @property
    def ts(self) -> int:
        return int(self.at.timestamp())

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


# The moments every time-dependent part must pass at (see test_calendar.py).
CALENDAR = (
    Moment("first-of-month-0030", dt.datetime(2027, 3, 1, 0, 30, tzinfo=UTC)),
    Moment("seventh", dt.datetime(2026, 12, 7, 15, 0, tzinfo=UTC)),
    Moment("last-day-of-month", dt.datetime(2026, 12, 31, 23, 30, tzinfo=UTC)),
    Moment("leap-day", dt.datetime(2028, 2, 29, 12, 0, tzinfo=UTC)),
    # Clocks go back at 02:00 local on 2026-10-25: that day has 25 hours in Berlin.
    Moment(
        "dst-end-berlin",
        dt.datetime(2026, 10, 25, 18, 0, tzinfo=ZoneInfo("Europe/Berlin")),
        "Europe/Berlin",
    ),
    # The 1st at 00:30 local, while UTC is still on the last day of the month before.
    Moment(
        "first-of-month-0030-berlin",
        dt.datetime(2027, 1, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin")),
        "Europe/Berlin",
    ),
    # A DST start in a zone west of UTC: 2027-03-14 has 23 hours in New York.
    Moment(
        "dst-start-new-york",
        dt.datetime(2027, 3, 14, 12, 0, tzinfo=ZoneInfo("America/New_York")),
        "America/New_York",
    ),
)


def real_now() -> float:
    """The wall clock, for the two kinds of test named in the module docstring only."""
    return time.time()


def real_offset(start: float) -> float:
    """The offset that makes a clock ticking in real time read `start` now."""
    return start - real_now()
