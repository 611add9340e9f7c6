"""customer_predictions: its declared column schema and its blocking checks (one row per customer of the
snapshot, probabilities in [0, 1], no null prediction), in plain code and as a Dagster asset whose
failing check stops what is downstream and publishes nothing."""

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from engagement_dagster.core.ml import scoring
from engagement_dagster.core.ml.registry import ModelRegistry
from engagement_dagster.core.ml.training import MODEL_KINDS, NaiveBaseline
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources.catalog import LocalCatalog
from engagement_dagster.defs.resources.lake import LocalLake
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import DuckDBWarehouse
from engagement_dagster.defs.scoring.assets import CUSTOMER_PREDICTIONS, PREDICTIONS_SCHEMA, customer_predictions

WEEK = "2026-11-09"
BASELINES = {"engagement_model": {"mean": 0.4}, "churn_model": {"rate": 0.3}, "ltv_model": {"median": 120.0},
             "content_recommender": {"popularity": ["music", "gaming", "travel"]}, "segment_model": {},
             "anomaly_model": {}}


def _ids(n: int) -> pd.Series:
    return pd.Series([f"c{i:04d}" for i in range(n)], name="customer_id")


def _baseline_predictions(n: int = 40) -> pd.DataFrame:
    frame = _ids(n).to_frame()
    return scoring.score(frame, {name: (NaiveBaseline(name, params), "baseline") for name, params in BASELINES.items()})


def _outcomes(predictions: pd.DataFrame, expected: pd.Series) -> dict[str, scoring.CheckOutcome]:
    return {o.name: o for o in scoring.prediction_checks(predictions, expected)}


def test_good_predictions_pass_every_check():
    predictions = _baseline_predictions()
    outcomes = _outcomes(predictions, _ids(40))
    assert set(outcomes) == {"one_row_per_customer", "probabilities_in_range", "no_null_predictions"}
    assert all(o.passed for o in outcomes.values()), outcomes
    assert outcomes["one_row_per_customer"].description == "40 rows: each of the snapshot's 40 customers once"
    assert all(isinstance(v, int) for v in outcomes["one_row_per_customer"].metadata.values())


def test_a_duplicated_missing_or_extra_customer_fails_one_row_per_customer():
    predictions = _baseline_predictions()
    duplicated = pd.concat([predictions, predictions.iloc[[3]]], ignore_index=True)
    failed = _outcomes(duplicated, _ids(40))["one_row_per_customer"]
    assert not failed.passed and "1 customer(s) with more than one row, e.g. c0003" in failed.description
    assert failed.metadata["customers_with_several_rows"] == 1 and failed.metadata["rows"] == 41

    missing = _outcomes(predictions.iloc[1:], _ids(40))["one_row_per_customer"]
    assert not missing.passed and "1 customer(s) of the snapshot without a row, e.g. c0000" in missing.description
    extra = _outcomes(predictions, _ids(39))["one_row_per_customer"]
    assert not extra.passed and "1 row(s) for customers not in the snapshot, e.g. c0039" in extra.description


def test_a_probability_out_of_range_fails_and_a_null_prediction_fails():
    predictions = _baseline_predictions()
    predictions.loc[5, "churn_probability"] = 1.2
    predictions.loc[6, "predicted_engagement_score"] = -0.1
    outcomes = _outcomes(predictions, _ids(40))
    in_range = outcomes["probabilities_in_range"]
    assert not in_range.passed and outcomes["one_row_per_customer"].passed
    assert "churn_probability: 1 row(s) outside [0, 1] (observed 1.2 … 1.2), e.g. customers c0005" in \
        in_range.description
    assert in_range.metadata == {"churn_probability_outside_0_1": 1, "predicted_engagement_score_outside_0_1": 1}

    predictions = _baseline_predictions()
    predictions.loc[7, "churn_probability"] = np.nan
    predictions.loc[8, "segment"] = None
    outcomes = _outcomes(predictions, _ids(40))
    assert outcomes["probabilities_in_range"].passed  # a null is not out of range: it is missing
    nulls = outcomes["no_null_predictions"]
    assert not nulls.passed and nulls.metadata["null_rows"] == 2
    assert nulls.description == "churn_probability: 1 null row(s); segment: 1 null row(s)"


def test_churn_drivers_may_be_null_only_while_churn_is_on_its_baseline(trained, parts):
    champions = {name: (model, "v1") for name, model in trained.items()}
    predictions = scoring.score(parts["test"].head(200), champions)
    assert _outcomes(predictions, predictions["customer_id"])["no_null_predictions"].passed
    predictions.loc[predictions.index[0], "churn_driver_2"] = None
    nulls = _outcomes(predictions, predictions["customer_id"])["no_null_predictions"]
    assert not nulls.passed and nulls.description == "churn_driver_2: 1 null row(s)"
    # on the naive baseline, no driver at all is what is expected
    assert _outcomes(_baseline_predictions(), _ids(40))["no_null_predictions"].passed


@pytest.fixture(scope="module")
def parts(model_input):
    from engagement_dagster.core.ml.training import splits

    frame, roles, _ = model_input
    return splits(frame, roles)


def test_the_declared_schema_is_the_shards_columns_and_types(trained, parts):
    """What the Columns tab shows is what the shards hold, in order and type, whether a model is served
    by its champion or by its naive baseline; nullable columns are exactly the churn drivers."""
    declared = [(c.name, c.type) for c in PREDICTIONS_SCHEMA.columns]
    assert declared[-1] == ("snapshot_week", "date")  # the partition, from the path
    by_champion = scoring.score(parts["test"].head(100), {name: (m, "v1") for name, m in trained.items()})
    for predictions in (by_champion, _baseline_predictions()):
        actual = [(c, scoring.column_kind(t)) for c, t in predictions.dtypes.items()]
        assert actual == declared[:-1]
    nullable = {c.name for c in PREDICTIONS_SCHEMA.columns if c.constraints.nullable}
    assert nullable == {f"churn_driver_{i}{s}" for i in (1, 2, 3) for s in ("", "_contribution")}
    unique = [c.name for c in PREDICTIONS_SCHEMA.columns if c.constraints.unique]
    assert unique == ["customer_id"]
    assert all(c.description for c in PREDICTIONS_SCHEMA.columns)
    assert customer_predictions.specs_by_key[CUSTOMER_PREDICTIONS].metadata["dagster/column_schema"] == \
        PREDICTIONS_SCHEMA


# --- the asset, on a small snapshot served by the naive baselines


@pytest.fixture
def scoring_resources(tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    path = tmp_path / "warehouse.duckdb"
    frame = _ids(60).to_frame()  # the naive baselines need nothing but the customers
    with duckdb.connect(str(path)) as con:
        con.register("frame", frame)
        con.execute("create table main.customer_model_input as select * from frame")
    lake = LocalLake(root=str(root))
    registry = ModelRegistry(lake)
    for name, params in BASELINES.items():
        registry.register_baseline(NaiveBaseline(name, params))
    return {"lake": lake, "warehouse": DuckDBWarehouse(path=str(path)), "catalog": LocalCatalog(),
            "writer_lease": WriterLease(lake=lake)}


@dg.asset(deps=[CUSTOMER_PREDICTIONS], partitions_def=weekly_partitions, key=["scoring", "downstream_mart"],
          backfill_policy=dg.BackfillPolicy.multi_run(1))
def downstream_mart():
    """Stands for the dbt marts: must not run after a failed blocking check."""


def _run(resources):
    return dg.materialize([customer_predictions, downstream_mart], partition_key=WEEK, resources=resources,
                          raise_on_error=False)


def test_the_asset_reports_schema_counts_and_passing_checks(scoring_resources):
    result = _run(scoring_resources)
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {"one_row_per_customer", "probabilities_in_range", "no_null_predictions"}
    assert all(c.passed for c in checks.values())
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == CUSTOMER_PREDICTIONS)
    metadata = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    assert metadata["dagster/row_count"] == 60 and metadata["customers"] == 60
    assert metadata["dagster/column_schema"] == PREDICTIONS_SCHEMA
    for key in ("shards", "exact_driver_rows", "at_risk_customers", "anomalies", "distinct_churn_probabilities"):
        assert isinstance(metadata[key], int), key
    assert metadata["mean_churn_probability"] == 0.3
    assert "| All customers | 60 | 100.0% |" in metadata["segments"]
    assert "has churn drivers" in metadata["churn_drivers"]  # the baseline names none
    assert scoring_resources["lake"].list_keys(f"predictions/snapshot_week={WEEK}/")


@pytest.mark.parametrize("break_it", ["duplicate", "out_of_range"])
def test_a_failing_check_stops_the_marts_and_publishes_nothing(scoring_resources, monkeypatch, break_it):
    score = scoring.score

    def broken(frame, champions):
        predictions = score(frame, champions)
        if break_it == "duplicate":
            return pd.concat([predictions, predictions.iloc[[0]]], ignore_index=True)
        predictions.loc[0, "churn_probability"] = 1.5
        return predictions

    monkeypatch.setattr(scoring, "score", broken)
    result = _run(scoring_resources)
    assert not result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    failed = {"duplicate": "one_row_per_customer", "out_of_range": "probabilities_in_range"}[break_it]
    assert not checks[failed].passed and checks[failed].severity == dg.AssetCheckSeverity.ERROR
    assert all(c.passed for name, c in checks.items() if name != failed)
    assert not result.get_asset_materialization_events()  # neither the predictions nor the mart
    assert not scoring_resources["lake"].list_keys("predictions/")  # nothing published


def test_the_checks_are_blocking():
    specs = {s.name: s for s in customer_predictions.check_specs}
    assert set(specs) == {"one_row_per_customer", "probabilities_in_range", "no_null_predictions"}
    assert all(s.blocking for s in specs.values())
    assert set(MODEL_KINDS) == set(BASELINES)
