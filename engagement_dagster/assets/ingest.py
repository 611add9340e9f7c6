"""`ingest` stage: the weekly raw customer snapshot, validated, PII-free, written atomically."""

import json
import os
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from engagement_dagster import ingest
from engagement_dagster.catalog import Catalog
from engagement_dagster.contract import LAKE_SCHEMA
from engagement_dagster.lake import Lake
from engagement_dagster.partitions import weekly_partitions

RAW_CUSTOMERS = dg.AssetKey(["ingest", "raw_customers"])
CHECKS = {
    "schema": "All 42 contract columns present; no direct identifier (email, name, phone) in the lake.",
    "unique_customer_ids": "customer_id is unique in the snapshot.",
    "null_rates": "No contract column has missing values.",
    "value_ranges": "Every value inside the contract's limits of meaning (fractions 0–1, percents 0–100, …).",
    "row_count_change": "Row count within the configured change (default ±50%) of the previous week's snapshot.",
}
WARNING_CHECKS = {
    "distribution_drift": "Warning only: numeric columns whose mean moved more than 0.25 sd, or whose spread "
                          "changed more than 1.5×, since the previous week.",
}


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


def _previous_profile(lake: Lake, week: str) -> dict | None:
    keys = weekly_partitions.get_partition_keys()
    if week not in keys or keys.index(week) == 0:
        return None
    key = ingest.profile_key(keys[keys.index(week) - 1])
    return json.loads(lake.read_bytes(key)) if lake.exists(key) else None


@dg.asset(
    key=RAW_CUSTOMERS,
    group_name="ingest",
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    description="The week's customers in the data contract (the seed platform's 42 columns and units), "
                "validated and PII-free.",
    check_specs=[*(dg.AssetCheckSpec(name, asset=RAW_CUSTOMERS, blocking=True, description=text)
                   for name, text in CHECKS.items()),
                 *(dg.AssetCheckSpec(name, asset=RAW_CUSTOMERS, blocking=False, description=text)
                   for name, text in WARNING_CHECKS.items())],
    kinds={"python", "parquet"},
)
def raw_customers(context: dg.AssetExecutionContext, config: RawCustomersConfig, lake: Lake, catalog: Catalog):
    week = context.partition_key
    uri = config.source_uri or os.environ.get("ENGAGEMENT_SOURCE_URI")
    with tempfile.TemporaryDirectory(prefix="engagement-ingest-") as spool:
        raw_file, truth_file = Path(spool) / "customers.parquet", Path(spool) / "truth.parquet"
        # Validation raises before anything is published: a bad file never replaces a good snapshot.
        if uri:
            result = ingest.ingest_source(uri.replace("{snapshot_week}", week), raw_file)
        else:
            result = ingest.ingest_synthetic(config.n_customers, week, config.seed, raw_file, truth_file)
        profile = ingest.profile(raw_file)
        if truth_file.exists():
            lake.write_file(ingest.oracle_key(week), truth_file)
        path = lake.write_file(ingest.raw_key(week), raw_file)
    previous = _previous_profile(lake, week)
    lake.write_bytes(ingest.profile_key(week), json.dumps(profile, indent=1).encode())
    catalog.register_partition(ingest.RAW_TABLE, lake.uri(ingest.RAW_PREFIX), LAKE_SCHEMA, week)

    churn = profile["columns"]["churn_30_day"]["mean"]
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": result.rows,
        "source": result.source,
        "path": dg.MetadataValue.path(path),
        "pii_columns_dropped": ", ".join(result.pii_columns_dropped) or "none",
        "churn_rate": round(churn, 4),
        "mean_engagement_score": round(profile["columns"]["engagement_score"]["mean"], 4),
    })
    for outcome in ingest.quality_checks(profile, previous, max_row_change=config.max_row_change):
        yield dg.AssetCheckResult(check_name=outcome.name, asset_key=RAW_CUSTOMERS, passed=outcome.passed,
                                  description=outcome.description, metadata=outcome.metadata,
                                  severity=dg.AssetCheckSeverity.ERROR if outcome.blocking
                                  else dg.AssetCheckSeverity.WARN)
