"""`ingest` stage: the weekly raw customer snapshot, validated, PII-free, written atomically."""

import io
import os

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from engagement_dagster import ingest
from engagement_dagster.catalog import Catalog
from engagement_dagster.generator import generate_snapshot
from engagement_dagster.lake import Lake
from engagement_dagster.partitions import weekly_partitions

RAW_CUSTOMERS = dg.AssetKey(["ingest", "raw_customers"])
CHECKS = {
    "schema": "All 42 contract columns present; no direct identifier (email, name, phone) in the lake.",
    "unique_customer_ids": "customer_id is unique in the snapshot.",
    "null_rates": "No contract column has missing values.",
    "value_ranges": "Every value inside the contract's range or allowed set.",
    "row_count_change": "Row count within the configured change (default ±50%) of the previous week's snapshot.",
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


def _previous_rows(lake: Lake, week: str) -> int | None:
    keys = weekly_partitions.get_partition_keys()
    if week not in keys or keys.index(week) == 0:
        return None
    previous = ingest.raw_key(keys[keys.index(week) - 1])
    if not lake.exists(previous):
        return None
    return pq.read_metadata(io.BytesIO(lake.read_bytes(previous))).num_rows


@dg.asset(
    key=RAW_CUSTOMERS,
    group_name="ingest",
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    description="The week's customers in the data contract (DESIGN.md §4), validated and PII-free.",
    check_specs=[dg.AssetCheckSpec(name, asset=RAW_CUSTOMERS, blocking=True, description=text)
                 for name, text in CHECKS.items()],
    kinds={"python", "parquet"},
)
def raw_customers(context: dg.AssetExecutionContext, config: RawCustomersConfig, lake: Lake, catalog: Catalog):
    week = context.partition_key
    uri = config.source_uri or os.environ.get("ENGAGEMENT_SOURCE_URI")
    if uri:
        source = uri.replace("{snapshot_week}", week)
        frame = ingest.read_source(source)
        truth = None
    else:
        source = f"synthetic(n={config.n_customers}, seed={config.seed}, week={week})"
        snapshot = generate_snapshot(config.n_customers, week, seed=config.seed)
        frame, truth = snapshot.customers, snapshot.oracle
    # Validation raises before anything is written: a bad file never replaces a good snapshot.
    customers, dropped_pii = ingest.prepare_snapshot(frame, source)
    if truth is not None:
        lake.write_parquet(ingest.oracle_key(week), truth)
    uri = lake.write_parquet(ingest.raw_key(week), customers)
    catalog.register_partition(ingest.RAW_TABLE, lake.uri(ingest.RAW_PREFIX),
                               pa.Schema.from_pandas(customers, preserve_index=False), week)

    yield dg.MaterializeResult(metadata={
        "dagster/row_count": len(customers),
        "source": source,
        "path": dg.MetadataValue.path(uri),
        "pii_columns_dropped": ", ".join(dropped_pii) or "none",
        "churn_rate": float(customers["churn_30_day"].mean()),
        "preview": dg.MetadataValue.md(customers.head(5).to_markdown(index=False)),
    })
    for outcome in ingest.quality_checks(customers, _previous_rows(lake, week), max_row_change=config.max_row_change):
        yield dg.AssetCheckResult(check_name=outcome.name, asset_key=RAW_CUSTOMERS, passed=outcome.passed,
                                  description=outcome.description, metadata=outcome.metadata,
                                  severity=dg.AssetCheckSeverity.ERROR)
