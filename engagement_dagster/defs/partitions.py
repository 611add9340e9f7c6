"""Weekly snapshots: one partition per week, keyed by its Monday, closing Monday 06:00 UTC.

The partitions start where the data starts: `ENGAGEMENT_FIRST_WEEK` (a Monday, YYYY-MM-DD), read when
the definitions load, so set it alike for every process that loads them (`make run`, `make ui`, the
daemon, the code server and run tasks on AWS). The default, 2026-10-26, is the first week of the
history `make run` materializes by default (4 weeks ending at the last closed week, 2026-11-16, when
it was chosen): a first `make run` fills the partitions, and every test week lies inside them. It is
a fixed date rather than one computed from today so that the partitions are the same in every
process and on every day: a week never drops out of them, a run's week is still a partition when
the UI or a later run reads it, and what the UI shows as missing is a week that was not run.
"""

import datetime as dt
import os

import dagster as dg

FIRST_WEEK_ENV = "ENGAGEMENT_FIRST_WEEK"
DEFAULT_FIRST_WEEK = "2026-10-26"


def first_week() -> str:
    """The first partition key: $ENGAGEMENT_FIRST_WEEK, else DEFAULT_FIRST_WEEK; a Monday."""
    value = os.environ.get(FIRST_WEEK_ENV, "").strip() or DEFAULT_FIRST_WEEK
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{FIRST_WEEK_ENV}={value!r} is not a date: give the first week's Monday, "
                         "YYYY-MM-DD") from None
    if day.weekday() != 0 or value != day.isoformat():
        monday = day - dt.timedelta(days=day.weekday())
        raise ValueError(f"{FIRST_WEEK_ENV}={value!r} is not a week's key: weeks are keyed by their Monday, "
                         f"YYYY-MM-DD (the week of {value} is {monday.isoformat()})")
    return value


weekly_partitions = dg.WeeklyPartitionsDefinition(
    start_date=first_week(), day_offset=1, hour_offset=6, timezone="UTC",
)
