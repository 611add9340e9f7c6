"""Model quality, calibration, the registry and its promotion gate, drivers, sharded scoring."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from engagement_dagster.core.ml import evaluation, scoring
from engagement_dagster.core.ml.feature_roles import read_roles
from engagement_dagster.core.ml.models.anomaly import AnomalyModel
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.models.engagement import EngagementModel
from engagement_dagster.core.ml.models.segment import SegmentModel
from engagement_dagster.core.ml.registry import ModelRegistry, data_fingerprint, promotion_decision
from engagement_dagster.core.ml.training import NaiveBaseline, new_model, splits
from engagement_dagster.core.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def parts(model_input):
    frame, roles, _ = model_input
    return splits(frame, roles)


@pytest.mark.parametrize("name", ["engagement_model", "churn_model", "ltv_model", "content_recommender",
                                  "segment_model"])
def test_every_supervised_and_segment_model_beats_its_naive_baseline(trained, parts, name):
    model = trained[name]
    test_metrics, baseline = model.evaluate(parts["test"]), model.baseline(parts["train"], parts["test"])
    decision = promotion_decision(type(model), test_metrics, baseline, champion=None)
    assert decision.promote, decision.reason


def test_models_sit_between_baseline_and_oracle_ceiling(trained, parts, model_input):
    _, roles, oracle = model_input
    churn = evaluation.report(trained["churn_model"], parts, roles, oracle)
    assert 0.5 < churn["test"]["auc"] <= churn["oracle_ceiling"]["auc"] + 0.01
    engagement = evaluation.report(trained["engagement_model"], parts, roles, oracle)
    assert engagement["oracle_ceiling"]["rmse"] <= engagement["test"]["rmse"] < engagement["baseline"]["rmse"]
    recommender = evaluation.report(trained["content_recommender"], parts, roles, oracle)
    assert recommender["baseline"]["top3_accuracy"] < recommender["test"]["top3_accuracy"] \
        <= recommender["oracle_ceiling"]["top3_accuracy"]


def test_churn_probabilities_are_calibrated(trained, parts):
    metrics = trained["churn_model"].evaluate(parts["test"])
    assert metrics["ece"] < 0.03  # 4,500 test rows
    assert metrics["lift_top_decile"] > 1.8


def test_fairness_gaps_are_reported_and_small_when_demographics_do_not_matter(trained, parts, model_input):
    _, roles, _ = model_input
    gaps = evaluation.fairness(trained["churn_model"], parts["test"], roles)
    assert set(gaps) == {f"{kind}_gap_{col}" for kind in ("demographic_parity", "equal_opportunity")
                         for col in ("gender", "age_band")}
    assert gaps["demographic_parity_gap_gender"] < 0.06


def test_segments_are_named_and_anomaly_share_is_near_target(trained, parts):
    segments: SegmentModel = trained["segment_model"]
    assert 3 <= segments.info["k"] <= 8 and len(set(segments.names)) == segments.info["k"]
    assert abs(sum(p["share"] for p in segments.profiles) - 1) < 1e-9
    anomalies: AnomalyModel = trained["anomaly_model"]
    assert 0.01 < anomalies.evaluate(parts["test"])["flagged_share"] < 0.04


def test_driver_contributions_plus_bias_add_up_to_the_margin(trained, parts):
    churn: ChurnModel = trained["churn_model"]
    rows = parts["test"].head(300)
    margin = churn.margin(rows)
    for approximate in (False, True):
        contrib = churn.contributions(rows, approximate=approximate)
        np.testing.assert_allclose(contrib.sum(axis=1), margin, rtol=1e-4, atol=1e-4)
    drivers = scoring.top_drivers(churn, rows, approximate=False)
    exact = churn.contributions(rows, approximate=False)[:, :-1]
    first = np.abs(drivers["churn_driver_1_contribution"].to_numpy())
    assert np.allclose(first, np.abs(exact).max(axis=1))
    assert (first >= np.abs(drivers["churn_driver_3_contribution"].to_numpy())).all()


def test_registry_round_trip_and_a_worse_challenger_is_refused(lake, parts, model_input):
    _, roles, _ = model_input
    registry = ModelRegistry(lake)
    spec = new_model("engagement_model", parts["train"], roles).spec
    good = EngagementModel(spec).fit(parts["train"], parts["valid"])
    test_metrics = good.evaluate(parts["test"])
    first = promotion_decision(EngagementModel, test_metrics, good.baseline(parts["train"], parts["test"]), None)
    version = registry.register(good, {"test": test_metrics}, "card", data_fingerprint(parts["train"]))
    registry.promote("engagement_model", version, first)

    loaded, champion_version = registry.load_champion("engagement_model")
    assert champion_version == version
    pd.testing.assert_frame_equal(loaded.predict(parts["test"]), good.predict(parts["test"]))

    # A challenger trained on shuffled labels has learned nothing.
    noise = parts["train"]["engagement_score"].sample(frac=1, random_state=1).to_numpy()
    shuffled = parts["train"].assign(engagement_score=noise)
    worse = EngagementModel(good.spec).fit(shuffled, parts["valid"])
    decision = promotion_decision(EngagementModel, worse.evaluate(parts["test"]),
                                  worse.baseline(parts["train"], parts["test"]),
                                  loaded.evaluate(parts["test"]))
    assert not decision.promote
    registry.register(worse, {"test": worse.evaluate(parts["test"])}, "card", data_fingerprint(shuffled))
    assert len(registry.versions("engagement_model")) == 2
    assert registry.champion("engagement_model")["version"] == version  # the champion stays


def test_gate_tolerance_against_the_champion():
    baseline = {"auc": 0.5}
    assert promotion_decision(ChurnModel, {"auc": 0.79}, baseline, {"auc": 0.80}).promote  # within 2%
    refused = promotion_decision(ChurnModel, {"auc": 0.75}, baseline, {"auc": 0.80})
    assert not refused.promote and "champion" in refused.reason
    broken = promotion_decision(EngagementModel, {"rmse": 9.0}, {"rmse": 8.0}, {"rmse": 7.0})
    assert not broken.promote and "does not beat the naive baseline" in broken.reason
    anomalous = promotion_decision(AnomalyModel, {"flagged_share": 0.2}, {"flagged_share": 0.02}, None)
    assert not anomalous.promote and "outside" in anomalous.reason


def test_without_a_champion_the_naive_baseline_serves(lake, parts):
    """A model with no champion is served by the naive model the gate compared it with: the
    training mean, the churn rate, the LTV median, the three most popular categories."""
    registry = ModelRegistry(lake)
    with pytest.raises(LookupError):
        registry.serving("content_recommender")
    for name in ("engagement_model", "churn_model", "ltv_model", "content_recommender", "segment_model",
                 "anomaly_model"):
        registry.register_baseline(NaiveBaseline.fit(name, parts["train"]))
    served = {name: registry.serving(name) for name in ("engagement_model", "churn_model", "ltv_model",
                                                         "content_recommender", "segment_model", "anomaly_model")}
    assert {version for _, version in served.values()} == {"baseline"}
    predictions = scoring.score(parts["test"], served)
    assert len(predictions) == len(parts["test"]) and predictions["customer_id"].is_unique
    train = parts["train"]
    assert np.allclose(predictions["predicted_engagement_score"], train["engagement_score"].mean())
    assert np.allclose(predictions["churn_probability"], train["churn_30_day"].mean())
    assert np.allclose(predictions["predicted_lifetime_value_usd"], train["lifetime_value_usd"].median())
    counts = train["content_category_primary"].value_counts()
    popular = sorted(counts.index, key=lambda c: (-counts[c], c))[:3]  # ties broken by name
    assert predictions[["recommended_category_1", "recommended_category_2", "recommended_category_3"]
                       ].drop_duplicates().values.tolist() == [popular]
    assert (predictions["churn_drivers_method"] == "none").all() and predictions["churn_driver_1"].isna().all()
    assert not predictions["is_anomaly"].any() and (predictions["content_recommender_version"] == "baseline").all()


def test_incomplete_versions_are_invisible(lake, trained):
    registry = ModelRegistry(lake)
    lake.write_bytes("models/churn_model/20260101T000000000000Z-deadbeef/model.ubj", b"partial")  # crashed mid-write
    assert registry.versions("churn_model") == []
    with pytest.raises(LookupError):
        registry.load_champion("churn_model")


def test_predictions_cover_every_customer_once_with_drivers_on_the_at_risk_rows(trained, model_input):
    frame, _, _ = model_input
    champions = {name: (model, "v1") for name, model in trained.items()}
    predictions = scoring.score(frame, champions)
    assert len(predictions) == len(frame) and predictions["customer_id"].is_unique
    assert set(predictions["customer_id"]) == set(frame["customer_id"])

    exact = predictions["churn_drivers_method"] == "exact_treeshap"
    assert (predictions.loc[exact, "churn_probability"] >= scoring.AT_RISK_CHURN_PROBABILITY).all()
    assert (predictions.loc[~exact, "churn_probability"] < scoring.AT_RISK_CHURN_PROBABILITY).all()
    top3 = predictions[["recommended_category_1", "recommended_category_2", "recommended_category_3"]]
    assert top3.nunique(axis=1).eq(3).all()


def test_at_risk_threshold_is_the_same_in_python_and_dbt():
    project = yaml.safe_load((PROJECT_ROOT / "dbt_project" / "dbt_project.yml").read_text())
    assert project["vars"]["at_risk_churn_probability"] == scoring.AT_RISK_CHURN_PROBABILITY


def test_a_feature_added_in_dbt_yaml_reaches_training(tmp_path):
    manifest = {"nodes": {"model.engagement.customer_model_input": {
        "resource_type": "model", "name": "customer_model_input", "columns": {
            "customer_id": {"meta": {"role": "id"}}, "split": {"meta": {"role": "split"}},
            "tenure_months": {"meta": {"role": "feature"}}, "my_new_ratio": {"meta": {"role": "feature"}},
            "platform": {"meta": {"role": "categorical"}}, "churn_30_day": {"meta": {"role": "target"}},
        }}}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    roles = read_roles(path)
    assert roles.features == ("tenure_months", "my_new_ratio") and roles.categoricals == ("platform",)
    manifest["nodes"]["model.engagement.customer_model_input"]["columns"]["oops"] = {"meta": {"role": "featur"}}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="oops"):
        read_roles(path)


def test_a_share_metric_must_beat_the_baseline_by_more_than_chance():
    from engagement_dagster.core.ml.models.content import ContentRecommender
    from engagement_dagster.core.ml.registry import noise_margin

    margin = noise_margin(ContentRecommender, 0.2575, 3_000)  # two binomial standard errors: ±0.016
    assert 0.015 < margin < 0.017
    noise = promotion_decision(ContentRecommender, {"top3_accuracy": 0.2651}, {"top3_accuracy": 0.2575}, None,
                               test_rows=3_000)
    assert not noise.promote and "no more than chance" in noise.reason
    words = evaluation.decision_words(ContentRecommender, noise, None)
    assert words.startswith("refused:") and "chance" in words and "naive baseline serves" in words
    learned = promotion_decision(ContentRecommender, {"top3_accuracy": 0.53}, {"top3_accuracy": 0.32}, None,
                                 test_rows=450)
    assert learned.promote
    # The same small lead on many more rows is no longer chance; other metrics keep no margin.
    assert promotion_decision(ContentRecommender, {"top3_accuracy": 0.2651}, {"top3_accuracy": 0.2575}, None,
                              test_rows=100_000).promote
    assert noise_margin(ChurnModel, 0.5, 3_000) == 0.0


def test_exact_churn_drivers_from_lookup_tables_equal_xgboosts_treeshap(trained, parts):
    """The batch's exact drivers come from fast_trees' lookup tables; they must be XGBoost's own
    pred_contribs (bias column included), to float32 rounding."""
    import xgboost as xgb

    churn = trained["churn_model"]
    rows = parts["test"].head(2_000)
    fast = churn.contributions(rows, approximate=False)
    assert churn._tree_shap() is not None  # the lookup tables, not the fallback
    reference = churn.booster.predict(xgb.DMatrix(churn.spec.matrix(rows), enable_categorical=True),
                                      pred_contribs=True)
    assert fast.shape == reference.shape
    assert np.abs(fast - reference).max() < 1e-5
