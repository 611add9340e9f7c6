"""The dbt models as Dagster assets, every dbt test shown as an asset check.

Two selections of one dbt project, because Python assets sit between them:
`features` (staging → customer_features → customer_model_input) feeds the models;
`scoring` (predictions_final, qa_review_sample, marts) reads the predictions they produce.
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from engagement_dagster.dbt_project import engagement_dbt
from engagement_dagster.feature_roles import range_failure_summary, range_test_failure_relations
from engagement_dagster.partitions import weekly_partitions
from engagement_dagster.warehouse import Warehouse


class EngagementDbtTranslator(DagsterDbtTranslator):
    """Models land in the group named by their dbt tag (`features` or `scoring`), which is also
    their key prefix; sources keep the key their YAML gives (`meta.dagster.asset_key`), which ties
    dbt to `ingest/raw_customers` and `scoring/customer_predictions`."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "scoring" if "scoring" in dbt_resource_props.get("tags", []) else "features"

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([self.get_group_name(dbt_resource_props), dbt_resource_props["name"]])


SNAPSHOT_WEEK_ENV = "ENGAGEMENT_SNAPSHOT_WEEK"
TRANSLATOR = EngagementDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def _explain(check: dg.AssetCheckResult, relation: str, warehouse: Warehouse) -> dg.AssetCheckResult:
    """A failed range test, told by its stored failing rows: which columns, how many rows, how far."""
    try:
        failures = warehouse.query(f"select * from {relation}").to_dict("records")
    except Exception:  # the test errored before storing rows: dbt's own message says why
        return check
    summary = range_failure_summary(failures)
    return dg.AssetCheckResult(
        passed=False, asset_key=check.asset_key, check_name=check.check_name, severity=check.severity,
        description=f"{len(failures)} column(s) out of range: {summary}",
        metadata={**(check.metadata or {}), "columns_out_of_range": summary})


def _build(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
    # dagster-dbt hands dbt a copy of os.environ: set the week there for this invocation only.
    previous = os.environ.get(SNAPSHOT_WEEK_ENV)
    os.environ[SNAPSHOT_WEEK_ENV] = context.partition_key
    stored = range_test_failure_relations(engagement_dbt.manifest_path)
    held = []
    try:
        invocation = dbt.cli(["build"], context=context, raise_on_error=False)
        for event in invocation.stream():
            if isinstance(event, dg.AssetCheckResult) and not event.passed and event.check_name in stored:
                held.append(event)  # read once dbt has let go of the warehouse (DuckDB: one writer)
            else:
                yield event
        for check in held:
            yield _explain(check, stored[check.check_name], warehouse)
        if not invocation.is_successful():
            raise invocation.get_error()
    finally:
        if previous is None:
            os.environ.pop(SNAPSHOT_WEEK_ENV, None)
        else:
            os.environ[SNAPSHOT_WEEK_ENV] = previous


@dbt_assets(
    manifest=engagement_dbt.manifest_path, project=engagement_dbt, dagster_dbt_translator=TRANSLATOR,
    select="tag:features", name="dbt_features",
    partitions_def=weekly_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),  # one week per dbt call
)
def dbt_features(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
    yield from _build(context, dbt, warehouse)


@dbt_assets(
    manifest=engagement_dbt.manifest_path, project=engagement_dbt, dagster_dbt_translator=TRANSLATOR,
    select="tag:scoring", name="dbt_scoring",
    partitions_def=weekly_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),
)
def dbt_scoring(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
    yield from _build(context, dbt, warehouse)
