"""The whole weekly refresh on a small snapshot: ingest → dbt → six models → scoring → marts."""

import json
import re

import dagster as dg
import duckdb
import pytest

from engagement_dagster.cli import summary
from engagement_dagster.core.ml.training import MODEL_KINDS
from engagement_dagster.definitions import defs
from engagement_dagster.defs.dbt.assets import dbt_scoring
from engagement_dagster.defs.resources import build_resources

WEEK = "2026-11-09"
N = 4_000


@pytest.fixture
def refreshed(lake_dir):
    result = dg.materialize(
        list(defs.assets), partition_key=WEEK, resources=build_resources("local"),
        run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": N}}}}, raise_on_error=False,
    )
    return result, lake_dir


def query(lake_dir, sql):
    with duckdb.connect(str(lake_dir / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).fetchall()


def test_the_whole_refresh(refreshed, lake):
    result, lake_dir = refreshed
    assert result.success
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {f"models/{name}" for name in MODEL_KINDS} | {
        "scoring/customer_predictions", "scoring/predictions_final", "scoring/qa_review_sample",
        "scoring/at_risk_customers", "scoring/high_engagement_customers", "scoring/churn_by_segment",
        "scoring/weekly_prediction_summary", "scoring/weekly_summary"} <= built
    gates = {c.asset_key.path[-1]: c.passed for c in result.get_asset_check_evaluations()
             if c.check_name == "promotion_gate"}
    assert gates == {name: True for name in MODEL_KINDS}  # first versions beat their baselines
    assert all(c.passed for c in result.get_asset_check_evaluations())

    # registry: a champion per model, whose card states test metrics beside the oracle ceiling
    for name in MODEL_KINDS:
        pointer = json.loads(lake.read_bytes(f"models/{name}/champion.json"))
        card = lake.read_bytes(f"models/{name}/{pointer['version']}/card.md").decode()
        assert "| metric | model | naive baseline | oracle ceiling |" in card
    churn_version = json.loads(lake.read_bytes("models/churn_model/champion.json"))["version"]
    churn_card = lake.read_bytes(f"models/churn_model/{churn_version}/card.md").decode()
    assert "| auc |" in churn_card and "| – |" not in churn_card.split("| auc |")[1].splitlines()[0]

    # numeric metadata the UI can plot across runs
    churn_event = next(e for e in result.get_asset_materialization_events()
                       if e.asset_key.path == ["models", "churn_model"])
    metadata = churn_event.event_specific_data.materialization.metadata
    assert isinstance(metadata["test_auc"].value, float) and "oracle_auc" in metadata

    # marts have their documented row counts
    assert query(lake_dir, "select count(*), count(distinct customer_id) from predictions_final") == [(N, N)]
    assert query(lake_dir, "select engagement_quartile, count(*) from qa_review_sample group by 1 order by 1") == [
        (1, 100), (2, 100), (3, 100), (4, 100)]
    assert query(lake_dir, "select count(*) from weekly_prediction_summary") == [(1,)]
    assert query(lake_dir, "select customers, at_risk_customers = (select count(*) from at_risk_customers) "
                           "from weekly_summary") == [(N, True)]
    segments = query(lake_dir, "select count(*), sum(customers) from churn_by_segment")[0]
    assert segments[1] == N and 3 <= segments[0] <= 8
    risky = query(lake_dir, "select count(*), min(churn_probability), count(distinct churn_drivers_method) "
                            "from at_risk_customers")[0]
    assert risky[0] == 0 or (risky[1] >= 0.5 and risky[2] == 1)
    assert query(lake_dir, "select min(predicted_engagement_score) >= 0.7 from high_engagement_customers") in (
        [(True,)], [(None,)])
    columns = {row[0] for row in query(
        lake_dir, "select column_name from information_schema.columns where table_name = 'predictions_final'")}
    assert not columns & {"email", "full_name", "phone"}

    # the summary `make run` prints: rows of every table, each model beside its baseline
    text = summary(result, WEEK, 1.0, {})
    assert re.search(r"scoring/predictions_final +4,000 rows", text)
    assert re.search(r"scoring/qa_review_sample +400 rows", text)
    assert re.search(r"churn_model +auc 0\.\d+ \(baseline 0\.5, oracle ceiling 0\.\d+\) +promoted", text)


def test_qa_sample_is_deterministic(refreshed):
    result, lake_dir = refreshed
    assert result.success
    first = query(lake_dir, "select customer_id from qa_review_sample order by customer_id")
    rerun = dg.materialize([dbt_scoring], partition_key=WEEK, resources=build_resources("local"))
    assert rerun.success
    assert query(lake_dir, "select customer_id from qa_review_sample order by customer_id") == first


def test_a_refused_challenger_warns_and_the_champions_keep_scoring(refreshed, lake):
    """A challenger that beats the baseline but not the champion is refused with a warning, not an
    error: the champion stays and this week's predictions are still made, by the champions."""
    from engagement_dagster.defs.models.assets import train_models
    from engagement_dagster.defs.scoring.assets import customer_predictions

    first, _ = refreshed
    assert first.success
    champions = {name: json.loads(lake.read_bytes(f"models/{name}/champion.json"))["version"] for name in MODEL_KINDS}
    # Same data, but every challenger must now be 50% better than its champion: none can be.
    rerun = dg.materialize([train_models, customer_predictions], partition_key=WEEK, resources=build_resources("local"),
                           run_config={"ops": {"train_models": {"config": {"promotion_tolerance": -0.5}}}},
                           raise_on_error=False)
    assert rerun.success
    gates = {c.asset_key.path[-1]: c for c in rerun.get_asset_check_evaluations() if c.check_name == "promotion_gate"}
    supervised = {"engagement_model", "churn_model", "ltv_model", "content_recommender", "segment_model"}
    for name in supervised:
        assert not gates[name].passed and gates[name].severity == dg.AssetCheckSeverity.WARN
        assert json.loads(lake.read_bytes(f"models/{name}/champion.json"))["version"] == champions[name]
    scored = next(e for e in rerun.get_asset_materialization_events() if e.asset_key.path[-1] == "customer_predictions")
    used = scored.event_specific_data.materialization.metadata["champion_versions"].value
    assert {name: used[name] for name in supervised} == {name: champions[name] for name in supervised}


def test_churn_on_its_naive_baseline_still_scores_everyone_and_builds_the_marts(refreshed, lake):
    """Churn without a champion (say, a first week whose challenger failed the gate) is served by
    the training churn rate: every customer still gets a row, the marts and their tests pass, and
    the at-risk list, which needs a churn model to single anyone out, is empty."""
    from engagement_dagster.core.ml.registry import ModelRegistry
    from engagement_dagster.core.ml.training import NaiveBaseline
    from engagement_dagster.defs.scoring.assets import customer_predictions

    first, lake_dir = refreshed
    assert first.success
    lake.delete("models/churn_model/champion.json")
    ModelRegistry(lake).register_baseline(NaiveBaseline("churn_model", {"rate": 0.6}))
    rerun = dg.materialize([customer_predictions, dbt_scoring], partition_key=WEEK, resources=build_resources("local"),
                           raise_on_error=False)
    assert rerun.success and all(c.passed for c in rerun.get_asset_check_evaluations())
    assert query(lake_dir, "select count(*), min(churn_probability), max(churn_probability), "
                           "count(distinct churn_model_version), min(churn_model_version), "
                           "count(churn_driver_1), min(churn_drivers_method) from predictions_final") == [
        (N, 0.6, 0.6, 1, "baseline", 0, "none")]
    assert query(lake_dir, "select count(*) from at_risk_customers") == [(0,)]
