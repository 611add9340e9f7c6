"""The code location: assets, checks, the weekly refresh job and its schedule, resources."""

import dagster as dg

from engagement_dagster.assets.features import dbt_features
from engagement_dagster.assets.ingest import raw_customers
from engagement_dagster.partitions import weekly_partitions
from engagement_dagster.resources import build_resources

# The whole graph, one partition (snapshot week) per run. In-process: dbt and the models share
# one Python process instead of re-importing the code location per step.
weekly_refresh = dg.define_asset_job(
    "weekly_refresh",
    selection=dg.AssetSelection.all(),
    partitions_def=weekly_partitions,
    executor_def=dg.in_process_executor,
    description="Ingest → dbt features for one snapshot week.",
)

defs = dg.Definitions(
    assets=[raw_customers, dbt_features],
    jobs=[weekly_refresh],
    # Monday 06:00 UTC, for the week that just closed.
    schedules=[dg.build_schedule_from_partitioned_job(weekly_refresh, name="weekly_refresh_schedule")],
    resources=build_resources(),
)
