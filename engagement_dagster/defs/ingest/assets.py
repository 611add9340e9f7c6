"""`ingest` stage: the weekly raw customer snapshot, validated, PII-free, written atomically."""

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from engagement_dagster.core.data import snapshot
from engagement_dagster.core.data.contract import LAKE_SCHEMA
from engagement_dagster.core.privacy import erase as erasure
from engagement_dagster.defs.partitions import FIRST_WEEK_ENV, weekly_partitions
from engagement_dagster.defs.resources.catalog import Catalog
from engagement_dagster.defs.resources.lake import Lake

RAW_CUSTOMERS = dg.AssetKey(["ingest", "raw_customers"])
SKIPPED_WITHOUT_PREVIOUS = " Skipped (not run) on a week without a previous snapshot, e.g. the first week."
CHECKS = {
    "schema": "All 42 contract columns present; no direct identifier (email, name, phone) in the lake.",
    "unique_customer_ids": "customer_id is unique in the snapshot.",
    "null_rates": "No contract column has missing values.",
    "value_ranges": "Every value inside the contract's limits of meaning (fractions 0–1, percents 0–100, …).",
    "row_count_change": "Row count within the configured change (default ±50%) of the previous week's snapshot."
                        + SKIPPED_WITHOUT_PREVIOUS,
}
WARNING_CHECKS = {
    "distribution_drift": "Warning only: numeric columns whose mean moved more than 0.25 sd, or whose spread "
                          "changed more than 1.5×, since the previous week." + SKIPPED_WITHOUT_PREVIOUS,
}
# Checks that compare with the previous week's snapshot: without one they do not run (the UI shows
# them as skipped) and the materialization's `skipped_checks` metadata says why.
WEEK_OVER_WEEK = ("row_count_change", "distribution_drift")


class _DeliberatelySkipped(logging.Filter):
    """Dagster warns on the terminal when a blocking check emits no result, which ours do on purpose
    on a first week (the run's summary and the asset's metadata say why): not a warning to decode."""

    notes = tuple(f"'{RAW_CUSTOMERS.to_user_string()}:{name}' emitted no result" for name in WEEK_OVER_WEEK)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(note in record.getMessage() for note in self.notes)


logging.getLogger("dagster._core.execution.plan.active").addFilter(_DeliberatelySkipped())


class RawCustomersConfig(dg.Config):
    source_uri: str | None = Field(
        default=None,
        description="CSV/Parquet path or URI (file://, s3://, https://) of the week's customers; "
                    "'{snapshot_week}' in it is replaced by the partition's week. Empty: "
                    "$ENGAGEMENT_SOURCE_URI if set (how the weekly schedule reads your files), else "
                    "the built-in synthetic generator.")
    n_customers: int = Field(default=100_000, description="Customers to generate (synthetic source only).")
    seed: int = Field(default=42, description="Generator seed (synthetic source only).")
    max_row_change: float = Field(default=0.5, description="Largest accepted relative change in rows week over week.")


def previous_profile(lake: Lake, week: str) -> tuple[dict | None, str]:
    """The previous week's profile and that week's key; or None and why there is none."""
    previous = (dt.date.fromisoformat(week) - dt.timedelta(weeks=1)).isoformat()
    first = weekly_partitions.get_first_partition_key()
    if first is None or previous < first:  # ISO dates order as strings
        return None, (f"no previous week to compare with: {week} is the first week of the partitions "
                      f"({FIRST_WEEK_ENV}={first})")
    key = snapshot.profile_key(previous)
    if not lake.exists(key):
        return None, f"no snapshot of the previous week, {previous}, to compare with"
    return json.loads(lake.read_bytes(key)), previous


@dg.multi_asset(
    name=RAW_CUSTOMERS.to_python_identifier(),  # the op (and step) name of the single asset it was
    specs=[dg.AssetSpec(
        RAW_CUSTOMERS, group_name="ingest", kinds={"python", "parquet"},
        description="The week's customers in the data contract (the seed platform's 42 columns and units), "
                    "validated and PII-free.")],
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    # Partitioned like the asset: each week's evaluation (or its absence: skipped) is recorded
    # against that week, where the run planned it.
    check_specs=[dg.AssetCheckSpec(name, asset=RAW_CUSTOMERS, blocking=name in CHECKS, description=text,
                                   partitions_def=weekly_partitions)
                 for name, text in {**CHECKS, **WARNING_CHECKS}.items()],
    # Subsettable so that a check may not run: the week-over-week checks on a week without a
    # previous snapshot, or checks left out of a selection (a check alone re-checks the stored profile).
    can_subset=True,
)
def raw_customers(context: dg.AssetExecutionContext, config: RawCustomersConfig, lake: Lake, catalog: Catalog):
    week = context.partition_key
    if RAW_CUSTOMERS in context.selected_asset_keys:
        profile, rows = _ingest(week, config, lake, catalog)
    else:  # checks alone: on the snapshot already written
        if not lake.exists(snapshot.profile_key(week)):
            raise FileNotFoundError(f"no snapshot of week {week} to check: materialize ingest/raw_customers first")
        profile = json.loads(lake.read_bytes(snapshot.profile_key(week)))
        rows = None
    previous, previous_week_or_why = previous_profile(lake, week)
    selected = {key.name for key in context.selected_asset_check_keys}
    skipped = {} if previous is not None else {name: previous_week_or_why for name in WEEK_OVER_WEEK
                                               if name in selected}
    if rows is not None:
        yield dg.MaterializeResult(asset_key=RAW_CUSTOMERS, metadata={
            **rows,
            "previous_week": previous_week_or_why if previous is not None else "none",
            **({"skipped_checks": dg.MetadataValue.json(skipped)} if skipped else {}),
        })
    if skipped:
        context.log.info(f"Skipped {', '.join(skipped)}: {previous_week_or_why}.")
    for outcome in snapshot.quality_checks(profile, previous, max_row_change=config.max_row_change):
        if outcome.name not in selected or outcome.name in skipped:
            continue
        yield dg.AssetCheckResult(check_name=outcome.name, asset_key=RAW_CUSTOMERS, passed=outcome.passed,
                                  description=outcome.description, metadata=outcome.metadata,
                                  severity=dg.AssetCheckSeverity.ERROR if outcome.blocking
                                  else dg.AssetCheckSeverity.WARN)


def _ingest(week: str, config: RawCustomersConfig, lake: Lake, catalog: Catalog):
    """Reads, validates and publishes the week's snapshot and its profile; returns the profile and the
    materialization's metadata."""
    uri = config.source_uri or os.environ.get("ENGAGEMENT_SOURCE_URI")
    with tempfile.TemporaryDirectory(prefix="engagement-ingest-") as spool:
        raw_file, truth_file = Path(spool) / "customers.parquet", Path(spool) / "truth.parquet"
        # Validation raises before anything is published: a bad file never replaces a good snapshot.
        if uri:
            result = snapshot.ingest_source(uri.replace("{snapshot_week}", week), raw_file)
        else:
            result = snapshot.ingest_synthetic(config.n_customers, week, config.seed, raw_file, truth_file)
        # A customer erased from this lake stays erased, whatever the source still holds.
        dropped = erasure.drop_erased(lake.store(), raw_file)
        if truth_file.exists():
            erasure.drop_erased(lake.store(), truth_file)
        profile = snapshot.profile(raw_file)
        if truth_file.exists():
            lake.write_file(snapshot.oracle_key(week), truth_file)
        path = lake.write_file(snapshot.raw_key(week), raw_file)
    lake.write_bytes(snapshot.profile_key(week), json.dumps(profile, indent=1).encode())
    catalog.register_partition(snapshot.RAW_TABLE, lake.uri(snapshot.RAW_PREFIX), LAKE_SCHEMA, week)
    return profile, {
        "dagster/row_count": result.rows - dropped,
        "erased_customers_dropped": dropped,
        "source": result.source,
        "path": dg.MetadataValue.path(path),
        "pii_columns_dropped": ", ".join(result.pii_columns_dropped) or "none",
        "churn_rate": round(profile["columns"]["churn_30_day"]["mean"], 4),
        "mean_engagement_score": round(profile["columns"]["engagement_score"]["mean"], 4),
    }
