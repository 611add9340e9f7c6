"""The dbt models as Dagster assets, every dbt test shown as an asset check, every built model with
its row counts.

Two selections of one dbt project, because Python assets sit between them:
`features` (staging → customer_features → customer_model_input) feeds the models;
`scoring` (predictions_final, qa_review_sample, marts) reads the predictions they produce.

Row counts: dagster-dbt's `fetch_row_counts()` counts through dbt's adapter in this process, which the
project's dbt resource does not open (resources.DbtCoreCliResource: ~1.6 s per step, and with DuckDB
that connection would hold the file the next dbt step must open), and it skips views. Here the
warehouse resource counts once dbt has finished (DuckDB: one writer at a time; Athena: one query per
dbt step). Like every partitioned asset of the graph, `dagster/row_count` (and
`dagster/partition_row_count`) is the rows of the week that was built; the marts keep every week, and
`rows_all_weeks` says how many they hold in all.
"""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from engagement_dagster.core import faults, idle_work
from engagement_dagster.core.ml.feature_roles import range_failure_summary, range_test_failure_relations
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import Warehouse


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


def _count_sql(unique_id: str, relation: str, week: str | None) -> str:
    week_rows = (f"coalesce(sum(case when snapshot_week = cast('{week}' as date) then 1 else 0 end), 0)"
                 if week else "null")
    return f"select '{unique_id}' as unique_id, count(*) as table_rows, {week_rows} as week_rows from {relation}"


def row_counts(warehouse: Warehouse, relations: Mapping[str, str], week: str) -> dict[str, dict[str, int]]:
    """Rows of each built relation (unique_id → relation name) as metadata: the week's (Dagster's
    row counts) and all weeks' (`rows_all_weeks`). One query for all of them (a `union all`, the same
    SQL on DuckDB and Athena); a relation without a `snapshot_week` column gets its total only."""
    if not relations:
        return {}
    try:
        frames = [warehouse.query(" union all ".join(_count_sql(u, r, week) for u, r in relations.items()))]
    except Exception:  # some relation has no snapshot_week column: one at a time
        frames = []
        for unique_id, relation in relations.items():
            try:
                frames.append(warehouse.query(_count_sql(unique_id, relation, week)))
            except Exception:
                frames.append(warehouse.query(_count_sql(unique_id, relation, None)))
    counts = {}
    for frame in frames:
        for row in frame.to_dict("records"):
            total, weekly = int(row["table_rows"]), row["week_rows"]
            if weekly is None or weekly != weekly:  # null / NaN: no snapshot_week column
                counts[row["unique_id"]] = {"dagster/row_count": total}
            else:
                weekly = int(weekly)
                counts[row["unique_id"]] = {"dagster/row_count": weekly, "dagster/partition_row_count": weekly,
                                            "rows_all_weeks": total}
    return counts


def _built_relations(events: list, manifest: Mapping[str, Any]) -> dict[str, str]:
    relations = {}
    for event in events:
        if isinstance(event, (dg.Output, dg.AssetMaterialization)) and "unique_id" in (event.metadata or {}):
            unique_id = event.metadata["unique_id"].value
            relation = manifest["nodes"].get(unique_id, {}).get("relation_name")
            if relation:
                relations[unique_id] = relation
    return relations


def _with_row_counts(event, counts: Mapping[str, dict[str, int]]):
    if isinstance(event, (dg.Output, dg.AssetMaterialization)) and "unique_id" in (event.metadata or {}):
        found = counts.get(event.metadata["unique_id"].value)
        if found:
            return event.with_metadata({**event.metadata, **found})
    return event


def _build(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse):
    # dagster-dbt hands dbt a copy of os.environ: set the week there for this invocation only.
    previous = os.environ.get(SNAPSHOT_WEEK_ENV)
    os.environ[SNAPSHOT_WEEK_ENV] = context.partition_key
    stored = range_test_failure_relations(engagement_dbt.manifest_path)
    held, events = [], []
    try:
        idle_work.start()  # slow set-up of later steps (the KB's model) runs while this process waits on dbt
        invocation = dbt.cli(["build"], context=context, raise_on_error=False)
        for event in invocation.stream():
            if isinstance(event, (dg.Output, dg.AssetMaterialization)) and not any(
                    isinstance(e, (dg.Output, dg.AssetMaterialization)) for e in events):
                faults.checkpoint(context.op_def.name)  # dbt_features / dbt_scoring: dbt is mid-build
            if isinstance(event, dg.AssetCheckResult) and not event.passed and event.check_name in stored:
                held.append(event)  # read once dbt has let go of the warehouse (DuckDB: one writer)
            else:
                events.append(event)  # yielded once the row counts are known (DuckDB: after dbt, again)
        try:
            counts = row_counts(warehouse, _built_relations(events, invocation.manifest), context.partition_key)
        except Exception as exc:  # a count is information: never the reason a build fails
            context.log.warning(f"row counts unavailable: {exc}")
            counts = {}
        for event in events:
            yield _with_row_counts(event, counts)
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
def dbt_features(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse,
                 writer_lease: WriterLease):
    yield from _build(context, dbt, warehouse)


@dbt_assets(
    manifest=engagement_dbt.manifest_path, project=engagement_dbt, dagster_dbt_translator=TRANSLATOR,
    select="tag:scoring", name="dbt_scoring",
    partitions_def=weekly_partitions, backfill_policy=dg.BackfillPolicy.multi_run(1),
)
def dbt_scoring(context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: Warehouse,
                writer_lease: WriterLease):
    yield from _build(context, dbt, warehouse)
