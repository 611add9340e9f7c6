"""`feature_drift`: a warning when the model inputs of the week moved away from the previous week's.

The PSI of every input of `features/customer_model_input` (its `feature` and `categorical` columns in
the dbt manifest) against the previous week, in that week's bins (`core.ml.drift`). The warehouse
keeps only the week last built of this table, so each evaluation also stores the week's reference
(bin edges and shares, no rows) in the lake, where the next week's evaluation finds it.

The week is the run's partition; run alone (e.g. from the asset's page), the check takes the week the
warehouse holds. Skipped, with the reason logged and on an observation of the asset
(`skipped_checks`), when there is no previous week to compare with.
"""


import datetime as dt

import dagster as dg
import pandas as pd

from engagement_dagster.core.ml import drift
from engagement_dagster.core.ml.feature_roles import MODEL_INPUT, read_roles
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.partitions import FIRST_WEEK_ENV, weekly_partitions
from engagement_dagster.defs.resources.lake import Lake
from engagement_dagster.defs.resources.warehouse import Warehouse

MODEL_INPUT_KEY = dg.AssetKey(["features", MODEL_INPUT])
WEEK_COLUMN = "snapshot_week"  # the model's `week` role
CHECK_NAME = "feature_drift"
TOP = 5


def reference_key(week: str) -> str:
    # Beside the raw snapshot's profiles; outside raw/, which Athena reads as Parquet.
    return f"profiles/{MODEL_INPUT}/snapshot_week={week}.json"


def _weeks(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame[WEEK_COLUMN]).dt.strftime("%Y-%m-%d")


def _skip(context: dg.AssetCheckExecutionContext, week: str | None, reason: str) -> None:
    context.log.info(f"{CHECK_NAME} skipped: {reason}")
    # No result is what the UI shows as skipped; the observation keeps the reason beside the asset.
    context.op_execution_context.log_event(dg.AssetObservation(
        asset_key=MODEL_INPUT_KEY, metadata={"skipped_checks": {CHECK_NAME: reason},
                                             **({"snapshot_week": week} if week else {})}))


@dg.asset_check(
    asset=MODEL_INPUT_KEY, name=CHECK_NAME, blocking=False,
    description=f"Warning only: population stability index of every model input against the previous week "
                f"(its deciles as bins; categories by share); warns above PSI {drift.DRIFT_THRESHOLD:g}, with the "
                "top drifting features in its metadata. Skipped on a week without a previous one.",
)
def feature_drift(context: dg.AssetCheckExecutionContext, warehouse: Warehouse, lake: Lake):
    frame = warehouse.query(drift.sample_sql(warehouse.relation(MODEL_INPUT))).drop(columns="sample_rank")
    held = sorted(set(_weeks(frame))) if len(frame) else []
    week = context.partition_key if context.has_partition_key else (held[-1] if held else None)
    if week is None or week not in held:
        _skip(context, week, f"the warehouse's {MODEL_INPUT} holds no rows of week {week} "
                             f"(it keeps the week last built: {', '.join(held) or 'none'})")
        return None
    current = frame[_weeks(frame) == week]
    roles = read_roles(engagement_dbt.manifest_path)
    lake.write_bytes(reference_key(week),
                     drift.reference(current, week, roles.features, roles.categoricals).to_json())

    previous = (dt.date.fromisoformat(week) - dt.timedelta(weeks=1)).isoformat()
    first = weekly_partitions.get_first_partition_key()
    if first is None or previous < first:
        _skip(context, week, f"no previous week to compare with: {week} is the first week of the partitions "
                             f"({FIRST_WEEK_ENV}={first})")
        return None
    if not lake.exists(reference_key(previous)):
        _skip(context, week, f"no reference of the previous week, {previous} ({reference_key(previous)}): "
                             "its model input was not built, or not checked, before this one")
        return None

    report = drift.compare(drift.Reference.from_json(lake.read_bytes(reference_key(previous))), current, week)
    drifting = report.drifting
    top = report.top(TOP)
    return dg.AssetCheckResult(
        passed=not drifting, severity=dg.AssetCheckSeverity.WARN, description=drift.describe(report, TOP),
        metadata={
            "snapshot_week": week, "reference_week": previous, "rows": len(current),
            "threshold": drift.DRIFT_THRESHOLD, "max_psi": round(report.max_psi, 4),
            "drifting_features": dg.MetadataValue.json({k: round(v, 4) for k, v in drifting.items()}),
            "top_drifting_features": dg.MetadataValue.json({k: round(v, 4) for k, v in top.items()}),
            "top_drifting_table": dg.MetadataValue.md(
                "| feature | PSI |\n|---|---|\n" + "\n".join(f"| {k} | {v:.4f} |" for k, v in top.items())),
            "features_compared": len(report.psi),
            **({"missing_features": list(report.missing_features)} if report.missing_features else {}),
        })
