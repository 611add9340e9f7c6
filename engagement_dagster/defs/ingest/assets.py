"""`ingest` stage: the weekly raw customer snapshot, validated, PII-free, written atomically."""

import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from engagement_dagster.core import faults
from engagement_dagster.core.data import snapshot
from engagement_dagster.core.data.contract import LAKE_SCHEMA
from engagement_dagster.core.privacy import erase as erasure
from engagement_dagster.defs.partitions import FIRST_WEEK_ENV, weekly_partitions
from engagement_dagster.defs.resources.catalog import Catalog
from engagement_dagster.defs.resources.lake import Lake
from engagement_dagster.defs.resources.lease import WriterLease

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
def raw_customers(context: dg.AssetExecutionContext, config: RawCustomersConfig, lake: Lake, catalog: Catalog,
                  writer_lease: WriterLease):
    week = context.partition_key
    previous, previous_week_or_why = previous_profile(lake, week)
    selected = {key.name for key in context.selected_asset_check_keys}
    skipped = {} if previous is not None else {name: previous_week_or_why for name in WEEK_OVER_WEEK
                                               if name in selected}

    def results(profile: dict) -> list[dg.AssetCheckResult]:
        return [dg.AssetCheckResult(check_name=o.name, asset_key=RAW_CUSTOMERS, passed=o.passed,
                                    description=o.description, metadata=o.metadata,
                                    severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN)
                for o in snapshot.quality_checks(profile, previous, max_row_change=config.max_row_change)
                if o.name in selected and o.name not in skipped]

    if skipped:
        context.log.info(f"Skipped {', '.join(skipped)}: {previous_week_or_why}.")
    if RAW_CUSTOMERS not in context.selected_asset_keys:  # checks alone: on the snapshot already written
        if not lake.exists(snapshot.profile_key(week)):
            raise FileNotFoundError(f"no snapshot of week {week} to check: materialize ingest/raw_customers first")
        yield from results(json.loads(lake.read_bytes(snapshot.profile_key(week))))
        return
    with tempfile.TemporaryDirectory(prefix="engagement-ingest-") as spool:
        staged = _read(week, config, lake, Path(spool))
        checks = results(staged.profile)
        refused = [c for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
        if refused:
            # Judged before publishing: the week's earlier snapshot (if any) stays as it was, and
            # nothing downstream runs on the refused one.
            yield from checks
            raise dg.Failure(description="raw_customers not published: " + "; ".join(
                f"{c.check_name}: {c.description}" for c in refused))
        metadata = _publish(week, staged, lake, catalog)
    yield dg.MaterializeResult(asset_key=RAW_CUSTOMERS, metadata={
        **metadata,
        "previous_week": previous_week_or_why if previous is not None else "none",
        **({"skipped_checks": dg.MetadataValue.json(skipped)} if skipped else {}),
    })
    yield from checks


@dataclass
class _Staged:
    """A week's snapshot read, validated and profiled in a spool directory, not yet published."""
    raw_file: Path
    truth_file: Path
    profile: dict
    result: snapshot.IngestResult
    dropped: int


def _read(week: str, config: RawCustomersConfig, lake: Lake, spool: Path) -> _Staged:
    uri = config.source_uri or os.environ.get("ENGAGEMENT_SOURCE_URI")
    raw_file, truth_file = spool / "customers.parquet", spool / "truth.parquet"
    # The contract is checked while reading: a bad file raises before anything is published.
    if uri:
        result = snapshot.ingest_source(uri.replace("{snapshot_week}", week), raw_file)
    else:
        result = snapshot.ingest_synthetic(config.n_customers, week, config.seed, raw_file, truth_file)
    # A customer erased from this lake stays erased, whatever the source still holds.
    dropped = erasure.drop_erased(lake.store(), raw_file)
    if truth_file.exists():
        erasure.drop_erased(lake.store(), truth_file)
    return _Staged(raw_file, truth_file, snapshot.profile(raw_file), result, dropped)


def _publish(week: str, staged: _Staged, lake: Lake, catalog: Catalog) -> dict:
    """Publishes the accepted snapshot, its oracle file and its profile; returns the materialization's metadata."""
    if staged.truth_file.exists():
        lake.write_file(snapshot.oracle_key(week), staged.truth_file)
    faults.checkpoint("ingest")
    path = lake.write_file(snapshot.raw_key(week), staged.raw_file)
    lake.write_bytes(snapshot.profile_key(week), json.dumps(staged.profile, indent=1).encode())
    catalog.register_partition(snapshot.RAW_TABLE, lake.uri(snapshot.RAW_PREFIX), LAKE_SCHEMA, week)
    profile, result = staged.profile, staged.result
    return {
        "dagster/row_count": result.rows - staged.dropped,
        "erased_customers_dropped": staged.dropped,
        "source": result.source,
        "path": dg.MetadataValue.path(path),
        "pii_columns_dropped": ", ".join(result.pii_columns_dropped) or "none",
        "churn_rate": round(profile["columns"]["churn_30_day"]["mean"], 4),
        "mean_engagement_score": round(profile["columns"]["engagement_score"]["mean"], 4),
    }
