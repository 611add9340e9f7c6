"""The API's predictor equals the weekly batch (core.ml.scoring) on the same feature rows, with exact
TreeSHAP churn drivers for every customer; its numpy fast paths equal the libraries' own results;
a new champion is picked up without a new Predictor; it imports no Dagster."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.ensemble import IsolationForest

from engagement_dagster.api.predictor import MODEL_NAMES, ModelsNotLoaded, Predictor, main
from engagement_dagster.core.ml import fast_trees, scoring
from engagement_dagster.core.ml.fast_trees import IsolationForestScorer, TreeShap, TreeShapTooLarge
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.registry import GateDecision, ModelRegistry
from engagement_dagster.core.storage.lake import LocalStore
from engagement_dagster.core.storage.warehouse import duckdb_query

REL = 1e-6  # float tolerance against the batch (relative)
CONTRIBUTION_ABS = 1e-6  # plus REL: XGBoost's TreeSHAP sums in float32, ours in float64


@pytest.fixture(scope="module")
def week(kb_weeks):
    """The second week's model-ready rows and the registry's serving models (the kb_weeks lake)."""
    root = kb_weeks[0]
    frame = duckdb_query(root / "warehouse.duckdb", "select * from customer_model_input")
    registry = ModelRegistry(LocalStore(root))
    return root, frame, {name: registry.serving(name) for name in MODEL_NAMES}


@pytest.fixture(scope="module")
def predictor(week):
    return Predictor.from_store(LocalStore(week[0]))


def assert_equal_to_batch(got: list[dict], frame: pd.DataFrame, champions: dict) -> None:
    """Every output of the predictor equals the batch's for the same rows; the drivers are the batch's
    exact TreeSHAP ones (scoring.top_drivers with approximate=False), for every row."""
    expected = scoring.score(frame, champions)
    out = pd.DataFrame(got)
    assert out["customer_id"].tolist() == expected["customer_id"].tolist()
    for key, column in [("engagement_score", "predicted_engagement_score"), ("churn_probability", "churn_probability"),
                        ("lifetime_value_usd", "predicted_lifetime_value_usd"), ("anomaly_score", "anomaly_score")]:
        np.testing.assert_allclose(out[key].to_numpy(float), expected[column].to_numpy(float), rtol=REL, err_msg=key)
    for key in ("segment_id", "segment", "is_anomaly"):
        assert out[key].tolist() == expected[key].tolist(), key
    categories = [[r[f"recommended_category_{i}"] for i in (1, 2, 3)] for _, r in expected.iterrows()]
    assert out["top_categories"].tolist() == categories
    assert all(v == {name: version for name, (_, version) in champions.items()} for v in out["model_versions"])

    churn = champions["churn_model"][0]
    if not isinstance(churn, ChurnModel):  # a naive baseline explains nothing
        assert all(d == [] for d in out["churn_drivers"])
        return
    drivers = scoring.top_drivers(churn, frame, approximate=False)
    for i in range(scoring.TOP_DRIVERS):
        got_i = [d[i] for d in out["churn_drivers"]]
        assert [d["feature"] for d in got_i] == drivers[f"churn_driver_{i + 1}"].tolist()
        contribution = np.array([d["contribution"] for d in got_i])
        np.testing.assert_allclose(contribution, drivers[f"churn_driver_{i + 1}_contribution"], rtol=REL,
                                   atol=CONTRIBUTION_ABS)
        words = {1: "raises churn risk", -1: "lowers churn risk", 0: "no effect"}
        assert [d["direction"] for d in got_i] == [words[int(s)] for s in np.sign(contribution)]


def test_predictions_equal_the_weekly_batch_with_exact_drivers_for_every_customer(week, predictor):
    _, frame, champions = week
    assert isinstance(champions["churn_model"][0], ChurnModel)  # a champion, with drivers to compare
    assert predictor.loaded() and predictor.versions() == {n: v for n, (_, v) in champions.items()}
    # The weekly batch explains customers below the at-risk threshold with Saabas approximations; the
    # API explains everyone exactly: the comparison covers both kinds of customer.
    methods = scoring.score(frame, champions)["churn_drivers_method"]
    assert {"exact_treeshap", "saabas_approximate"} <= set(methods)
    got = predictor.predict(frame.to_dict("records"))
    assert len(got) == len(frame)
    assert_equal_to_batch(got, frame, champions)


def test_one_row_at_a_time_equals_the_batch_call(week, predictor):
    _, frame, _ = week
    rows = frame.head(300).to_dict("records")
    together = predictor.predict(rows)
    assert [predictor.predict([row])[0] for row in rows] == together
    assert predictor.predict([]) == []


def with_gaps(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with unseen category levels and missing values (NaN, and None in object columns)."""
    out = frame.copy()
    rng = np.random.default_rng(7)
    numeric = [c for c in out.columns if pd.api.types.is_numeric_dtype(out[c]) and c not in ("churn_30_day",)]
    for column in numeric:
        out[column] = out[column].astype("float64").mask(rng.random(len(out)) < 0.08)
    for column, unseen in [("location", "XX-NEW"), ("platform", "smart_fridge"), ("acquisition_channel", None)]:
        values = out[column].astype(object)
        values[rng.random(len(out)) < 0.15] = unseen
        out[column] = values
    return out


def test_unseen_levels_and_missing_values_are_handled_as_the_batch_does(week, predictor):
    _, frame, champions = week
    gappy = with_gaps(frame.head(1500))
    rows = gappy.to_dict("records")
    for row in rows[::2]:  # the API may send None where the batch has NaN
        row.update({k: None for k, v in row.items() if isinstance(v, float) and np.isnan(v)})
    assert_equal_to_batch(predictor.predict(rows), gappy, champions)


def test_a_row_without_a_model_column_is_refused_by_name(week, predictor):
    row = week[1].head(1).to_dict("records")[0]
    del row["log_weekly_minutes"]
    with pytest.raises(KeyError, match="log_weekly_minutes"):
        predictor.predict([row])


def test_treeshap_tables_equal_xgboost_pred_contribs_on_all_features(week):
    """Every feature's contribution, not only the top 3, on rows with gaps."""
    _, frame, champions = week
    churn = champions["churn_model"][0]
    assert isinstance(churn, ChurnModel)
    gappy = with_gaps(frame.head(1500))
    expected = churn.contributions(gappy, approximate=False)[:, :-1]
    spec = churn.spec
    x = spec.matrix(gappy)
    for column in spec.categories:
        x[column] = x[column].cat.codes.replace(-1, np.nan)
    shap = TreeShap(churn.booster, np.arange(len(spec.columns)), len(spec.columns))
    np.testing.assert_allclose(shap.contributions(x.to_numpy("float32")), expected, rtol=REL, atol=CONTRIBUTION_ABS)


@pytest.mark.parametrize("max_cat_to_onehot", [1, 64])  # partition splits (category sets), one-hot splits
def test_treeshap_on_deeper_trees_with_repeated_features_and_categories(max_cat_to_onehot):
    """Depth 6 (features tested twice on a path), both kinds of categorical split, missing values."""
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.integers(0, 5, n).astype(float),
                          "d": pd.Categorical(rng.choice(list("pqrstuvw"), n))})
    logit = frame["a"] * 2 - frame["b"] ** 2 + (frame["d"].isin(["p", "s", "v"])) * 1.5 + np.sin(frame["c"])
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "eta": 0.3, "nthread": 1,
                         "max_cat_to_onehot": max_cat_to_onehot},
                        xgb.DMatrix(frame, label, enable_categorical=True), 30)
    x = frame.assign(d=frame["d"].cat.codes.astype(float)).to_numpy("float32")
    x[rng.random(n) < 0.05, 3] = np.nan  # a missing category
    x[:50, 3] = 7  # the last level
    x[50:100, 3] = 30  # a code beyond every split's set: XGBoost sends it left
    expected = booster.predict(xgb.DMatrix(x, feature_names=list(frame.columns), feature_types=booster.feature_types,
                                           enable_categorical=True), pred_contribs=True)[:, :-1]
    shap = TreeShap(booster, np.arange(4), 4)
    assert shap.players >= 3
    np.testing.assert_allclose(shap.contributions(x), expected, rtol=REL, atol=CONTRIBUTION_ABS)


def test_trees_too_deep_for_tables_fall_back_to_xgboost(week, monkeypatch):
    _, frame, champions = week
    monkeypatch.setattr(fast_trees, "MAX_TABLE_ENTRIES", 0)
    features = len(champions["churn_model"][0].spec.columns)
    with pytest.raises(TreeShapTooLarge):
        TreeShap(champions["churn_model"][0].booster, np.arange(features), features)
    fallback = Predictor.from_store(LocalStore(week[0]))
    assert fallback._serving.churn.shap is None
    rows = frame.head(200)
    assert_equal_to_batch(fallback.predict(rows.to_dict("records")), rows, champions)


def test_isolation_forest_scorer_equals_score_samples_with_missing_values():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(2000, 6)).astype("float32")
    forest = IsolationForest(n_estimators=50, max_samples=128, random_state=0).fit(train)
    x = rng.normal(scale=1.5, size=(500, 6)).astype("float32")
    x[rng.random(x.shape) < 0.1] = np.nan  # AnomalyModel fills medians; the forest itself routes NaN too
    np.testing.assert_array_equal(IsolationForestScorer(forest).score_samples(x), forest.score_samples(x))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_new_champion_is_picked_up_without_a_new_predictor(week, tmp_path):
    root, frame, _ = week
    store = LocalStore(tmp_path)
    shutil.copytree(root / "models", tmp_path / "models")
    clock = Clock()
    live = Predictor(store, check_seconds=5, clock=clock)
    before = live.versions()
    registry = ModelRegistry(store)
    model, _ = registry.serving("ltv_model")
    version = registry.register(model, {}, "a retrained copy", "f" * 64)
    registry.promote("ltv_model", version, GateDecision(True, "test", "mae", 1.0, 2.0, None, 0.02))

    assert live.refresh_if_changed() is False  # not yet due: at most every check_seconds
    assert live.versions() == before
    clock.now += 5
    assert live.refresh_if_changed() is True
    assert live.versions() == {**before, "ltv_model": version}
    assert live.predict(frame.head(1).to_dict("records"))[0]["model_versions"]["ltv_model"] == version
    clock.now += 5
    assert live.refresh_if_changed() is False  # nothing changed since


def test_a_champion_that_cannot_load_leaves_the_current_models_serving(week, tmp_path):
    root, frame, _ = week
    store = LocalStore(tmp_path)
    shutil.copytree(root / "models", tmp_path / "models")
    clock = Clock()
    live = Predictor(store, check_seconds=5, clock=clock)
    before, rows = live.versions(), frame.head(5).to_dict("records")
    expected = live.predict(rows)
    store.write_bytes("models/churn_model/champion.json", json.dumps({"version": "no-such-version"}).encode())
    clock.now += 5
    assert live.refresh_if_changed() is False
    assert live.versions() == before and live.predict(rows) == expected


def test_naive_baselines_serve_until_there_is_a_champion(week, tmp_path):
    root, frame, _ = week
    store = LocalStore(tmp_path)
    for name in MODEL_NAMES:
        store.write_bytes(f"models/{name}/baseline.json", (root / "models" / name / "baseline.json").read_bytes())
    baselines = Predictor.from_store(store)
    assert baselines.versions() == {name: "baseline" for name in MODEL_NAMES}
    registry = ModelRegistry(store)
    rows = frame.head(100)
    assert_equal_to_batch(baselines.predict(rows.to_dict("records")), rows,
                          {name: registry.serving(name) for name in MODEL_NAMES})


def test_an_empty_registry_is_not_loaded_until_models_arrive(week, tmp_path):
    root, frame, _ = week
    clock = Clock()
    empty = Predictor(LocalStore(tmp_path), check_seconds=5, clock=clock)
    assert not empty.loaded() and empty.versions() == {}
    with pytest.raises(ModelsNotLoaded):
        empty.predict(frame.head(1).to_dict("records"))
    shutil.copytree(root / "models", tmp_path / "models")
    clock.now += 5
    assert empty.refresh_if_changed() is True
    assert empty.loaded() and len(empty.predict(frame.head(1).to_dict("records"))) == 1


def test_the_bench_command_prints_latencies(week, capsys):
    main(["--bench", str(week[0]), "--single", "20", "--batches", "2", "--batch-size", "100"])
    out = capsys.readouterr().out
    assert "predict([one row])" in out and "predict(100 rows)" in out and "p99" in out


def test_the_predictor_imports_no_dagster():
    code = ("import sys, engagement_dagster.api.predictor; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_dbt', 'dagster_aws', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
