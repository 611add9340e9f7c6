"""The code location: assets, checks, jobs, the weekly schedule, resources."""

import dagster as dg

from engagement_dagster.core.deploy_sizes import validate_ecs_run_tags
from engagement_dagster.defs.alerts import ASSET_CHECKS, FRESHNESS_CHECK_SELECTION, SENSORS
from engagement_dagster.defs.dbt.assets import dbt_features, dbt_scoring
from engagement_dagster.defs.ingest.assets import raw_customers
from engagement_dagster.defs.kb.assets import kb_documents, kb_index
from engagement_dagster.defs.models.assets import train_models
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources import build_resources
from engagement_dagster.defs.scoring.assets import customer_predictions

# Fargate size for the heavy work: 16 vCPU / 64 GB. Run-level tags, because the EcsRunLauncher
# does not read ECS tags from single assets.
HEAVY_RUN_TAGS = {"ecs/cpu": "16384", "ecs/memory": "65536"}
# Every job writes the lake: the run queue starts one such run at a time (deploy/dagster.yaml, ui.py).
LAKE_WRITER_TAGS = {"engagement/lake-writer": "true"}


def _job(name: str, selection: dg.AssetSelection, description: str, tags: dict | None = None):
    tags = {**LAKE_WRITER_TAGS, **(tags or {})}
    validate_ecs_run_tags(tags, owner=f"job {name}")  # AWS would refuse an invalid pair only at launch
    # In-process: dbt and the models share one Python process instead of re-importing the code
    # location for every step (which costs seconds each).
    # Freshness checks judge today, not the run's week (a backfill of an old week would fail them): their
    # own sensor runs them after each materialization, never a weekly job.
    return dg.define_asset_job(name, selection=selection - FRESHNESS_CHECK_SELECTION, partitions_def=weekly_partitions,
                               executor_def=dg.in_process_executor, description=description, tags=tags)


weekly_refresh = _job("weekly_refresh", dg.AssetSelection.all(),
                      "The whole graph for one snapshot week: ingest → dbt features → six models → scoring → marts.",
                      HEAVY_RUN_TAGS)
training_job = _job("training", dg.AssetSelection.groups("models"),
                    "Retrain the six models on the week's model-ready table (promotion through the gate).",
                    HEAVY_RUN_TAGS)
scoring_job = _job("scoring", dg.AssetSelection.groups("scoring"),
                   "Score every customer with the champions and rebuild the marts.", HEAVY_RUN_TAGS)

defs = dg.Definitions(
    assets=[raw_customers, dbt_features, train_models, customer_predictions, dbt_scoring, kb_documents, kb_index],
    asset_checks=ASSET_CHECKS,  # freshness of the raw snapshot and the predictions; feature drift (PSI)
    jobs=[weekly_refresh, training_job, scoring_job],
    sensors=SENSORS,  # a failed run notifies (log line, webhook, SNS); freshness checks evaluated
    # Monday 06:00 UTC, for the week that just closed.
    schedules=[dg.build_schedule_from_partitioned_job(weekly_refresh, name="weekly_refresh_schedule")],
    resources=build_resources(),
    # Materializations started from the UI run in one process too, like the jobs: the run holds the
    # lake's writer lease from its first step to its last (defs/resources/lease.py).
    executor=dg.in_process_executor,
)
