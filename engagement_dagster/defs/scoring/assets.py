"""`scoring` stage: predictions for every customer of the week from the champion models, with their
column schema and blocking checks (one row per customer of the snapshot, probabilities in [0, 1], no
missing prediction): a failure stops the marts, which would be wrong."""

import os
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
from pydantic import Field

from engagement_dagster.core.ml import scoring
from engagement_dagster.core.ml.evaluation import round_sig
from engagement_dagster.core.ml.feature_roles import MODEL_INPUT
from engagement_dagster.core.ml.registry import ModelRegistry
from engagement_dagster.defs.models.assets import MODEL_INPUT_KEY, MODEL_KEYS
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources.catalog import Catalog
from engagement_dagster.defs.resources.lake import Lake
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import Warehouse

CUSTOMER_PREDICTIONS = dg.AssetKey(["scoring", "customer_predictions"])

# The shards' columns, as the Dagster UI's Columns tab shows them (the partition column last).
PREDICTIONS_SCHEMA = dg.TableSchema(columns=[
    *(dg.TableColumn(name, kind, description, constraints=dg.TableColumnConstraints(
        nullable=nullable, unique=name == "customer_id",
        other=["within [0, 1]"] if name in scoring.PROBABILITY_COLUMNS else None))
      for name, (kind, nullable, description) in scoring.PREDICTION_COLUMNS.items()),
    dg.TableColumn(*scoring.PARTITION_COLUMN, constraints=dg.TableColumnConstraints(nullable=False)),
])

CHECKS = {
    "one_row_per_customer": "Exactly one row per customer of the week's model-ready table: none repeated, none "
                            "missing, none extra (a repeated or missing customer would miscount every mart).",
    "probabilities_in_range": "churn_probability and predicted_engagement_score within [0, 1].",
    "no_null_predictions": "No missing prediction in any non-nullable column (churn drivers only while churn is "
                           "served by its naive baseline).",
}


class ScoringConfig(dg.Config):
    rows_per_shard: int = Field(default=scoring.ROWS_PER_SHARD, description="Target rows per prediction shard.")
    workers: int = Field(default=0, description=(
        "Scoring processes, one shard each at a time. 0: one per core when the week has at least "
        f"{scoring.PARALLEL_FROM_ROWS:,} customers (below that, starting processes costs more than it saves), "
        "else the run's own process."))


def _segment_table(segments: pd.DataFrame) -> str:
    total = int(segments["customers"].sum())
    return "\n".join(["| segment | customers | share |", "|---|---|---|",
                      *(f"| {r.segment} | {int(r.customers):,} | {r.customers / total:.1%} |"
                        for r in segments.itertuples())])


def _drivers_table(drivers: pd.DataFrame, rows: int = 5) -> str:
    """The at-risk customers' top churn drivers, and which way each pushes their risk."""
    if drivers.empty:
        return (f"No customer with churn probability ≥ {scoring.AT_RISK_CHURN_PROBABILITY} has churn drivers this "
                "week.")

    def way(n: int, mean: float) -> str:
        return f"{n:,}" + (f" (mean {mean:+.3g} log-odds)" if n else "")

    return "\n".join([
        f"Top churn driver of the customers with churn probability ≥ {scoring.AT_RISK_CHURN_PROBABILITY}:", "",
        "| top driver | customers | raises churn risk for | lowers churn risk for |", "|---|---|---|---|",
        *(f"| {r.driver} | {int(r.customers):,} | {way(int(r.raises), r.mean_raising)} "
          f"| {way(int(r.lowers), r.mean_lowering)} |" for r in drivers.head(rows).itertuples())])


@dg.asset(
    key=CUSTOMER_PREDICTIONS,
    deps=[MODEL_INPUT_KEY, *MODEL_KEYS.values()],
    group_name="scoring",
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    kinds={"python", "parquet"},
    description="Every customer of the week: engagement, churn probability, LTV, segment, anomaly flag, "
                "top-3 content categories, top-3 churn drivers and the model versions used.",
    metadata={"dagster/column_schema": PREDICTIONS_SCHEMA},
    # Partitioned like the asset (as raw_customers' checks): each week's evaluation is recorded against it.
    check_specs=[dg.AssetCheckSpec(name, asset=CUSTOMER_PREDICTIONS, blocking=True, description=text,
                                   partitions_def=weekly_partitions)
                 for name, text in CHECKS.items()],
)
def customer_predictions(context: dg.AssetExecutionContext, config: ScoringConfig, lake: Lake, warehouse: Warehouse,
                         catalog: Catalog, writer_lease: WriterLease):
    """Shard by shard (the customers whose hash modulo the shard count is the shard), each read, scored and
    spooled on its own, in several processes for a large week: memory holds a shard per worker, never the
    week. Checked on the spooled shards, then published."""
    week = context.partition_key
    source = warehouse.shard_source(MODEL_INPUT)
    rows = source.count()
    registry = ModelRegistry(lake)
    champions = {name: registry.serving(name) for name in MODEL_KEYS}
    versions = {name: version for name, (_, version) in champions.items()}
    on_baseline = sorted(name for name, version in versions.items() if version == "baseline")
    if on_baseline:
        context.log.warning(f"served by their naive baseline (no champion yet): {', '.join(on_baseline)}")
    shards = scoring.shard_count(rows, config.rows_per_shard)
    workers = config.workers or ((os.cpu_count() or 1) if rows >= scoring.PARALLEL_FROM_ROWS else 1)
    with tempfile.TemporaryDirectory(prefix="engagement-scoring-") as spool:
        results = scoring.score_shards(source, scoring.ServingModels(lake.store(), versions), shards, Path(spool),
                                       workers, champions=champions)
        counts = sum((r.counts for r in results), scoring.CheckCounts())
        if counts.customers_in_snapshot < rows:  # rows no shard read (a customer without a hash)
            counts.missing += rows - counts.customers_in_snapshot
            counts.customers_in_snapshot = rows
        outcomes = scoring.judge(counts)
        failed = [o for o in outcomes if not o.passed]
        if failed:
            # Nothing is published: the week's previous predictions (if any) stay as they were, and the
            # marts, which would be wrong, are not built.
            for outcome in outcomes:
                yield _check_result(outcome)
            raise dg.Failure(description="customer_predictions not published: " + "; ".join(
                f"{o.name}: {o.description}" for o in failed))
        spooled = f"{spool}/*.parquet"
        summary, drivers = scoring.summarize(spooled), scoring.driver_directions(spooled)
        schema = pq.read_schema(results[0].path)
        uris = scoring.publish_shards(lake, week, results)
    catalog.register_partition(scoring.PREDICTIONS_TABLE, lake.uri(scoring.PREDICTIONS_PREFIX), schema, week)
    yield dg.MaterializeResult(metadata={
        "dagster/row_count": int(summary["rows"]),
        "dagster/column_schema": PREDICTIONS_SCHEMA,
        "customers": int(summary["customers"]),
        "mean_churn_probability": round_sig(summary["mean_churn_probability"]),
        "churn_probability_p90": round_sig(summary["churn_probability_p90"]),
        "distinct_churn_probabilities": int(summary["distinct_churn_probabilities"]),
        "at_risk_customers": int(summary["at_risk_customers"]),
        "mean_predicted_engagement": round_sig(summary["mean_predicted_engagement"]),
        "predicted_engagement_p10": round_sig(summary["predicted_engagement_p10"]),
        "predicted_engagement_p90": round_sig(summary["predicted_engagement_p90"]),
        "total_predicted_ltv_usd": round(float(summary["total_predicted_ltv_usd"]), 2),
        "anomalies": int(summary["anomalies"]),
        "anomaly_share": round_sig(summary["anomaly_share"]),
        "exact_driver_rows": int(summary["exact_driver_rows"]),
        "segments": dg.MetadataValue.md(_segment_table(summary["segments"])),
        "churn_drivers": dg.MetadataValue.md(_drivers_table(drivers)),
        "champion_versions": dg.MetadataValue.json(versions),
        "models_on_naive_baseline": ", ".join(on_baseline) or "none",
        "shards": shards,
        "scoring_processes": max(1, min(workers, shards)),
        "path": dg.MetadataValue.path(uris[0].rsplit("/", 1)[0]),
    })
    for outcome in outcomes:
        yield _check_result(outcome)


def _check_result(outcome: scoring.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key=CUSTOMER_PREDICTIONS, check_name=outcome.name, passed=outcome.passed,
                               severity=dg.AssetCheckSeverity.ERROR, description=outcome.description,
                               metadata=outcome.metadata)
