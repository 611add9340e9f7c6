"""The spine end to end on small snapshots in a temporary lake: ingest → dbt features."""

import json
import re

import dagster as dg
import duckdb
import numpy as np
import pandas as pd

from engagement_dagster.cli import skipped_checks, summary
from engagement_dagster.core.data.contract import TARGETS
from engagement_dagster.core.data.snapshot import raw_key
from engagement_dagster.defs.dbt.assets import dbt_features
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.ingest.assets import RAW_CUSTOMERS, raw_customers
from engagement_dagster.defs.resources import build_resources

PREVIOUS, WEEK_1, WEEK_2 = "2026-10-26", "2026-11-02", "2026-11-09"
N = 3_000


def materialize(week, assets=(raw_customers, dbt_features), **config):
    return dg.materialize(
        list(assets), partition_key=week, resources=build_resources("local"),
        run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": N, **config}}}}
        if raw_customers in assets else None,
        raise_on_error=False,
    )


def table(lake_dir, name):
    with duckdb.connect(str(lake_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(f"select * from main.{name}").df()


def test_weekly_refresh_builds_features_with_a_stable_split(lake_dir, lake):
    first = materialize(WEEK_1)
    assert first.success
    keys = {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()}
    assert keys == {"ingest/raw_customers", "features/stg_customers", "features/customer_features",
                    "features/customer_model_input"}
    checks = first.get_asset_check_evaluations()
    assert all(c.passed for c in checks)
    # No snapshot of the week before: the week-over-week checks do not run (skipped), saying why.
    assert {c.check_name for c in checks if c.asset_key == RAW_CUSTOMERS} == {
        "schema", "unique_customer_ids", "null_rates", "value_ranges"}
    why = f"no snapshot of the previous week, {PREVIOUS}, to compare with"
    assert skipped_checks(first) == {"ingest/raw_customers": {"row_count_change": why, "distribution_drift": why}}
    assert any(c.asset_key.path[0] == "features" for c in checks)  # dbt tests surface as checks

    raw = lake.read_parquet(raw_key(WEEK_1))
    assert len(raw) == N and not {"email", "full_name", "phone"} & set(raw.columns)
    assert lake.exists(f"oracle/customers/snapshot_week={WEEK_1}/truth.parquet")

    model_input = table(lake_dir, "customer_model_input")
    assert len(model_input) == N and model_input["customer_id"].is_unique
    shares = model_input["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.70) < 0.04 and abs(shares["test"] - 0.15) < 0.04
    split_1 = model_input.set_index("customer_id")["split"]

    second = materialize(WEEK_2)
    assert second.success
    assert {c.check_name: c.passed for c in second.get_asset_check_evaluations() if c.asset_key == RAW_CUSTOMERS} == {
        "schema": True, "unique_customer_ids": True, "null_rates": True, "value_ranges": True,
        "row_count_change": True, "distribution_drift": True}
    assert skipped_checks(second) == {}
    split_2 = table(lake_dir, "customer_model_input").set_index("customer_id")["split"]
    common = split_1.index.intersection(split_2.index)
    assert len(common) > 0.9 * N
    assert (split_1[common] == split_2[common]).all()  # a customer never changes fold


def test_bad_source_fails_clearly_and_keeps_the_previous_snapshot(lake_dir, lake, tmp_path):
    assert materialize(WEEK_1, assets=(raw_customers,)).success
    before = lake.read_bytes(raw_key(WEEK_1))

    bad = lake.read_parquet(raw_key(WEEK_1))
    bad.loc[5, "age"] = 400
    bad_path = tmp_path / "bad_week.csv"
    bad.to_csv(bad_path, index=False)
    result = materialize(WEEK_1, assets=(raw_customers,), source_uri=str(bad_path))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert str(bad_path) in message and "'age'" in message and "above the maximum" in message
    # What `make run` prints: one line that says what, where and what to do; no stack trace.
    text = summary(result, WEEK_1, 1.0, {})
    (stopped,) = [line for line in text.splitlines() if "STOPPED" in line]
    assert stopped.startswith(f"  STOPPED at ingest__raw_customers: {bad_path}: column 'age': 1 row(s), e.g. data "
                              "rows [6]: above the maximum 120") and "What to do:" in stopped
    assert "Traceback" not in text
    assert lake.read_bytes(raw_key(WEEK_1)) == before
    assert not list(lake_dir.glob("raw/**/.*tmp"))  # no temporary file left behind


def test_a_collapsed_row_count_blocks_the_features(lake_dir):
    assert materialize(WEEK_1, assets=(raw_customers,)).success
    result = materialize(WEEK_2, n_customers=N // 3)
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    assert failed == ["row_count_change"]
    # Judged before publishing: nothing materialized, the week not written, dbt never ran.
    assert result.get_asset_materialization_events() == []
    assert not (lake_dir / raw_key(WEEK_2)).exists()


def test_one_range_check_names_every_out_of_range_feature(lake_dir, tmp_path):
    """The documented `meta.range` of every model-ready column is checked in one dbt test, which
    fails with one row per bad column (null or outside its range)."""
    from dbt.cli.main import dbtRunner

    assert materialize(WEEK_1).success
    with duckdb.connect(str(lake_dir / "warehouse.duckdb")) as con:
        con.execute("update main.customer_model_input set avg_job_completion_rating = 0.5 where customer_id in "
                    "(select customer_id from main.customer_model_input limit 3)")
        con.execute("update main.customer_model_input set match_rate_smoothed = null where customer_id in "
                    "(select customer_id from main.customer_model_input limit 1)")
    run = dbtRunner().invoke([
        "test", "--select", "customer_model_input,test_name:columns_within_meta_range", "--store-failures",
        "--project-dir", str(engagement_dbt.project_dir), "--profiles-dir", str(engagement_dbt.project_dir),
        "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")])
    (outcome,) = run.result.results
    assert outcome.status == "fail" and outcome.failures == 2
    with duckdb.connect(str(lake_dir / "warehouse.duckdb")) as con:  # dbt, in this process, still holds it
        bad = dict(con.sql(f"select column_name, rows_outside_range from {outcome.node.relation_name}").fetchall())
    assert bad == {"avg_job_completion_rating": 3, "match_rate_smoothed": 1}


def test_a_range_failure_says_which_column_and_by_how_much(lake_dir, lake):
    """Values outside a column's documented range stop the features, and the check (in the UI and
    the CLI summary) names each column, its count of bad rows and how far out they go."""
    assert materialize(WEEK_1, assets=(raw_customers,)).success
    raw = lake.read_parquet(raw_key(WEEK_1))
    raw.loc[:2, "avg_job_completion_rating"] = [0.5, 0.25, 6.0]  # written past the contract, on purpose
    lake.write_parquet(raw_key(WEEK_1), raw)
    result = materialize(WEEK_1, assets=(dbt_features,))
    assert not result.success
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name.startswith("columns_within")]
    assert not check.passed
    assert check.description == ("1 column(s) out of range: avg_job_completion_rating: 3 row(s) outside [1, 5]: "
                                 "observed 0.25 … 6")


def test_features_do_not_depend_on_targets(lake_dir, lake):
    """Static: the feature model reads no target column. Behavioural: replacing every target
    with noise leaves every feature value unchanged."""
    nodes = json.loads(engagement_dbt.manifest_path.read_text())["nodes"]
    features_node = nodes["model.engagement.customer_features"]
    assert features_node["depends_on"]["nodes"] == ["model.engagement.stg_customers"]
    words = set(re.findall(r"[a-z_0-9]+", re.sub(r"--[^\n]*", "", features_node["raw_code"].lower())))
    assert not words & set(TARGETS)

    assert materialize(WEEK_1).success
    features = table(lake_dir, "customer_features").sort_values("customer_id", ignore_index=True)

    raw = lake.read_parquet(raw_key(WEEK_1))
    rng = np.random.default_rng(0)
    raw["engagement_score"] = rng.uniform(0, 1, len(raw)).round(4)
    raw["churn_30_day"] = rng.integers(0, 2, len(raw))
    raw["lifetime_value_usd"] = rng.uniform(0, 1000, len(raw)).round(2)
    raw["content_category_primary"] = rng.choice(["a", "b"], len(raw))
    lake.write_parquet(raw_key(WEEK_1), raw)
    assert materialize(WEEK_1, assets=(dbt_features,)).success

    assert table(lake_dir, "customer_model_input")["content_category_primary"].isin(["a", "b"]).all()
    again = table(lake_dir, "customer_features").sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(features, again)


def test_model_ready_roles_come_from_dbt_yaml():
    node = json.loads(engagement_dbt.manifest_path.read_text())["nodes"]["model.engagement.customer_model_input"]
    roles = {name: col["meta"].get("role") for name, col in node["columns"].items()}
    assert {n for n, r in roles.items() if r == "target"} == set(TARGETS)
    assert roles["split"] == "split" and roles["customer_id"] == "id"
    assert roles["gender"] == "protected" and roles["age_band"] == "protected"
    inputs = {n for n, r in roles.items() if r in ("feature", "categorical")}
    assert len(inputs) > 30 and not inputs & (set(TARGETS) | {"gender", "age_band", "customer_id"})


def test_a_users_weekly_files_are_read_by_week(lake_dir, lake, tmp_path, monkeypatch):
    from engagement_dagster.core.data.contract import CONTRACT_COLUMNS
    from engagement_dagster.core.data.generator import generate_snapshot

    for week in (WEEK_1, WEEK_2):  # the seed platform's 42-column format, one file per week
        customers = generate_snapshot(500, week).customers[list(CONTRACT_COLUMNS)]
        customers.to_csv(tmp_path / f"customers_{week}.csv", index=False)
    monkeypatch.setenv("ENGAGEMENT_SOURCE_URI", str(tmp_path / "customers_{snapshot_week}.csv"))
    assert materialize(WEEK_2, assets=(raw_customers,)).success
    written = lake.read_parquet(raw_key(WEEK_2))
    expected = pd.read_csv(tmp_path / f"customers_{WEEK_2}.csv", dtype={"customer_id": str})
    assert list(written["customer_id"]) == list(expected["customer_id"])
    assert not lake.exists(f"oracle/customers/snapshot_week={WEEK_2}/truth.parquet")  # no truth for real data
