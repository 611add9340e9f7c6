"""The seed platform's own export (42 columns, its units) through the whole weekly refresh: a
prediction for every customer, marts that make sense, and one model that cannot learn (a
category drawn independently of behaviour, as in the seed's file) served by its naive baseline
while the other five keep their models."""

import re

import dagster as dg
import duckdb
import pandas as pd

from engagement_dagster.cli import summary
from engagement_dagster.core.data.contract import CONTRACT_COLUMNS
from engagement_dagster.definitions import defs
from engagement_dagster.defs.resources import build_resources
from tests.seed_export import write_seed_export

WEEK = "2026-11-09"
N = 6_000


def refresh(source):
    return dg.materialize(list(defs.assets), partition_key=WEEK, resources=build_resources("local"),
                          run_config={"ops": {"ingest__raw_customers": {"config": {"source_uri": str(source)}}}},
                          raise_on_error=False)


def query(lake_dir, sql):
    with duckdb.connect(str(lake_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).df()


def gates(result):
    return {c.asset_key.path[-1]: c for c in result.get_asset_check_evaluations() if c.check_name == "promotion_gate"}


def test_the_seed_export_scores_every_customer(lake_dir, tmp_path):
    source = tmp_path / "customer_engagement_dataset_extended.csv"
    frame = write_seed_export(source, N, seed=11, category="behaviour")
    assert list(frame.columns) == list(CONTRACT_COLUMNS)
    result = refresh(source)
    assert result.success
    assert all(check.passed for check in gates(result).values())

    final = query(lake_dir, "select * from predictions_final")
    assert len(final) == N and set(final["customer_id"]) == set(frame["customer_id"])
    assert final["predicted_engagement_score"].between(0, 1).all()
    assert len(query(lake_dir, "select * from high_engagement_customers")) > 0
    assert len(query(lake_dir, "select * from at_risk_customers")) > 0


def test_a_category_that_is_pure_noise_is_served_by_popularity(lake_dir, tmp_path):
    source = tmp_path / "customer_engagement_dataset_extended.csv"
    frame = write_seed_export(source, N, seed=12, category="noise")
    # Free text a spreadsheet would run as a formula reaches the marts as text.
    formula = '=HYPERLINK("http://example.com","x")'
    frame.loc[:4, "content_category_primary"] = formula
    frame.to_csv(source, index=False)

    result = refresh(source)
    assert result.success  # a model that cannot learn never stops the week
    gate = gates(result)["content_recommender"]
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.WARN
    assert "naive baseline serves" in gate.description
    assert all(gates(result)[name].passed for name in ("engagement_model", "churn_model", "ltv_model"))

    final = query(lake_dir, "select * from predictions_final")
    assert len(final) == N
    assert (final["content_recommender_version"] == "baseline").all()
    assert (final["churn_model_version"] != "baseline").all()
    top3 = final[["recommended_category_1", "recommended_category_2", "recommended_category_3"]]
    assert top3.notna().all().all() and len(top3.drop_duplicates()) == 1  # the most popular three, for everyone
    exported = final.set_index("customer_id").loc[frame.loc[:4, "customer_id"], "content_category_primary"]
    assert (exported == "'" + formula).all()
    assert not final["content_category_primary"].str.match(r"^[=+\-@]").any()

    text = summary(result, WEEK, 1.0, {})
    assert re.search(r"content_recommender +top3_accuracy .* NOT promoted: no champion yet, the naive baseline", text)
    assert "WARNING models/content_recommender:promotion_gate" in text
    assert pd.notna(final["churn_driver_1"]).all()
