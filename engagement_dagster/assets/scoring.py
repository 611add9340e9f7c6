"""`scoring` stage: predictions for every customer of the week from the champion models."""

import dagster as dg
import numpy as np
import pyarrow as pa
from pydantic import Field

from engagement_dagster import scoring
from engagement_dagster.assets.models import MODEL_INPUT_KEY, MODEL_KEYS
from engagement_dagster.catalog import Catalog
from engagement_dagster.feature_roles import MODEL_INPUT
from engagement_dagster.lake import Lake
from engagement_dagster.partitions import weekly_partitions
from engagement_dagster.registry import ModelRegistry
from engagement_dagster.warehouse import Warehouse

CUSTOMER_PREDICTIONS = dg.AssetKey(["scoring", "customer_predictions"])


class ScoringConfig(dg.Config):
    rows_per_shard: int = Field(default=scoring.ROWS_PER_SHARD, description="Target rows per prediction shard.")


@dg.asset(
    key=CUSTOMER_PREDICTIONS,
    deps=[MODEL_INPUT_KEY, *MODEL_KEYS.values()],
    group_name="scoring",
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    kinds={"python", "parquet"},
    description="Every customer of the week: engagement, churn probability, LTV, segment, anomaly flag, "
                "top-3 content categories, top-3 churn drivers and the model versions used.",
)
def customer_predictions(context: dg.AssetExecutionContext, config: ScoringConfig, lake: Lake, warehouse: Warehouse,
                         catalog: Catalog):
    week = context.partition_key
    frame = warehouse.read_table(MODEL_INPUT)
    registry = ModelRegistry(lake)
    champions = {name: registry.serving(name) for name in MODEL_KEYS}
    on_baseline = sorted(name for name, (_, version) in champions.items() if version == "baseline")
    if on_baseline:
        context.log.warning(f"served by their naive baseline (no champion yet): {', '.join(on_baseline)}")
    predictions = scoring.score(frame, champions)
    shards = scoring.shard_count(len(predictions), config.rows_per_shard)
    uris = scoring.write_shards(lake, week, predictions, shards)
    catalog.register_partition(scoring.PREDICTIONS_TABLE, lake.uri(scoring.PREDICTIONS_PREFIX),
                               pa.Schema.from_pandas(predictions, preserve_index=False), week)
    churn = predictions["churn_probability"]
    engagement = predictions["predicted_engagement_score"]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(predictions),
        "shards": shards,
        "path": dg.MetadataValue.path(uris[0].rsplit("/", 1)[0]),
        "mean_churn_probability": float(churn.mean()),
        "churn_probability_p90": float(np.quantile(churn, 0.9)),
        "mean_predicted_engagement": float(engagement.mean()),
        "predicted_engagement_p10": float(np.quantile(engagement, 0.1)),
        "predicted_engagement_p90": float(np.quantile(engagement, 0.9)),
        "total_predicted_ltv_usd": float(predictions["predicted_lifetime_value_usd"].sum()),
        "anomaly_share": float(predictions["is_anomaly"].mean()),
        "exact_driver_rows": int((predictions["churn_drivers_method"] == "exact_treeshap").sum()),
        "segments": dg.MetadataValue.md(
            predictions["segment"].value_counts().rename("customers").to_frame().to_markdown()),
        "champion_versions": dg.MetadataValue.json({n: v for n, (_, v) in champions.items()}),
        "models_on_naive_baseline": ", ".join(on_baseline) or "none",
    })
