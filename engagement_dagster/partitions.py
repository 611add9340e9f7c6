"""Weekly snapshots: one partition per week, keyed by its Monday, closing Monday 06:00 UTC."""

import dagster as dg

from engagement_dagster.generator import EPOCH

weekly_partitions = dg.WeeklyPartitionsDefinition(
    start_date=EPOCH.isoformat(), day_offset=1, hour_offset=6, timezone="UTC",
)
