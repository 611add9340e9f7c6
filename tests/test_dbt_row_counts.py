"""The dbt assets report their row counts: the week's (`dagster/row_count`, `dagster/partition_row_count`)
and, as the marts keep every week, all weeks' (`rows_all_weeks`), counted through the warehouse resource
once dbt is done."""

import dagster as dg
import duckdb
import pandas as pd

from engagement_dagster.defs.dbt.assets import dbt_features, row_counts
from engagement_dagster.defs.ingest.assets import raw_customers
from engagement_dagster.defs.resources import build_resources
from engagement_dagster.defs.resources.warehouse import DuckDBWarehouse, Warehouse

WEEK = "2026-11-09"


def test_row_counts_of_a_weekly_table_and_of_a_table_without_weeks(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create table main.mart as select * from (values (1, date '2026-11-02'), (2, date '2026-11-02'), "
                    "(3, date '2026-11-09'), (4, date '2026-11-09'), (5, date '2026-11-09')) t(id, snapshot_week)")
        con.execute("create table main.plain as select * from range(4) t(id)")
        con.execute("create table main.empty_mart (id integer, snapshot_week date)")
    relations = {"model.engagement.mart": '"warehouse"."main"."mart"',
                 "model.engagement.plain": '"warehouse"."main"."plain"',
                 "model.engagement.empty_mart": '"warehouse"."main"."empty_mart"'}
    counts = row_counts(DuckDBWarehouse(path=str(path)), relations, WEEK)
    assert counts == {
        "model.engagement.mart": {"dagster/row_count": 3, "dagster/partition_row_count": 3, "rows_all_weeks": 5},
        "model.engagement.plain": {"dagster/row_count": 4},  # no snapshot_week: its total only
        "model.engagement.empty_mart": {"dagster/row_count": 0, "dagster/partition_row_count": 0,
                                        "rows_all_weeks": 0},
    }
    assert all(isinstance(v, int) for c in counts.values() for v in c.values())


class RecordingWarehouse(Warehouse):
    """Answers like Athena would (a typed frame) and records the SQL it was given."""

    def query(self, sql: str) -> pd.DataFrame:
        RecordingWarehouse.sql.append(sql)
        return pd.DataFrame({"unique_id": ["model.engagement.a", "model.engagement.b"], "table_rows": [10, 7],
                             "week_rows": [4, 7]})


def test_one_query_per_dbt_step_in_sql_both_warehouses_run():
    RecordingWarehouse.sql = []
    counts = row_counts(RecordingWarehouse(), {"model.engagement.a": '"awsdatacatalog"."db"."a"',
                                               "model.engagement.b": '"awsdatacatalog"."db"."b"'}, WEEK)
    assert counts["model.engagement.a"] == {"dagster/row_count": 4, "dagster/partition_row_count": 4,
                                            "rows_all_weeks": 10}
    [sql] = RecordingWarehouse.sql
    assert sql.count(" union all ") == 1 and "::" not in sql
    assert "snapshot_week = cast('2026-11-09' as date)" in sql and 'from "awsdatacatalog"."db"."a"' in sql
    assert row_counts(RecordingWarehouse(), {}, WEEK) == {}


def test_the_dbt_assets_report_their_row_counts(lake_dir):
    result = dg.materialize([raw_customers, dbt_features], partition_key=WEEK, resources=build_resources("local"),
                            run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": 1_500}}}})
    assert result.success
    counts = {}
    for event in result.get_asset_materialization_events():
        metadata = event.event_specific_data.materialization.metadata
        if event.asset_key.path[0] == "features":
            counts[event.asset_key.path[-1]] = tuple(metadata[k].value for k in (
                "dagster/row_count", "dagster/partition_row_count", "rows_all_weeks"))
    # the staging view too: it reads one week of the raw snapshot
    assert counts == {name: (1_500, 1_500, 1_500)
                      for name in ("stg_customers", "customer_features", "customer_model_input")}


def test_the_marts_count_the_week_built_and_all_weeks(kb_weeks):
    """Two weeks of the whole graph (the knowledge-base fixture's): each mart reports the second week's
    rows, and all the weeks it keeps."""
    from conftest import KB_CUSTOMERS

    _, _, result, _, _ = kb_weeks
    marts = {}
    for event in result.get_asset_materialization_events():
        metadata = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
        if event.asset_key.path[0] == "scoring" and "unique_id" in metadata:
            marts[event.asset_key.path[-1]] = metadata
    assert {"predictions_final", "qa_review_sample", "churn_by_segment", "weekly_prediction_summary"} <= set(marts)
    assert all(m["dagster/row_count"] == m["dagster/partition_row_count"] for m in marts.values())
    final = marts["predictions_final"]
    assert (final["dagster/row_count"], final["rows_all_weeks"]) == (KB_CUSTOMERS, 2 * KB_CUSTOMERS)
    summary = marts["weekly_prediction_summary"]
    assert (summary["dagster/row_count"], summary["rows_all_weeks"]) == (1, 2)
