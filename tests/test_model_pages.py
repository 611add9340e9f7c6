"""What a model's page in the Dagster UI says: a few headline metrics rounded as a person reads them,
the card inline, the promotion decision in words; segment names that match their centroids; churn
probabilities that keep the booster's ranking and stay calibrated; drivers with their direction."""

import json

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from engagement_dagster.core.ml import evaluation, metrics, scoring
from engagement_dagster.core.ml.models.anomaly import AnomalyModel
from engagement_dagster.core.ml.models.churn import ChurnModel, fit_interpolated_isotonic
from engagement_dagster.core.ml.models.engagement import EngagementModel
from engagement_dagster.core.ml.models.segment import (
    SEGMENT_ASPECTS,
    SEGMENT_DIMENSIONS,
    SEGMENT_MARKED_SD,
    SegmentModel,
    segment_name,
    segment_names,
)
from engagement_dagster.core.ml.registry import GateDecision, promotion_decision
from engagement_dagster.core.ml.training import MODEL_KINDS, splits
from engagement_dagster.defs.models.assets import MODEL_KEYS, train_models
from engagement_dagster.defs.resources.lake import LocalLake
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import DuckDBWarehouse

WEEK = "2026-11-09"


@pytest.fixture(scope="module")
def parts(model_input):
    frame, roles, _ = model_input
    return splits(frame, roles)


def _rounded(value) -> bool:
    return value == float(f"{value:.4g}")


# --- the asset's page


@pytest.fixture(scope="module")
def trained_pages(model_input, tmp_path_factory):
    """train_models materialized on the 30,000-customer snapshot, then the churn and segment models
    again with a gate no challenger can pass (it must be 50% better than the champion)."""
    frame, _, oracle = model_input
    root = tmp_path_factory.mktemp("pages")
    path = root / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.register("frame", frame)
        con.execute("create table main.customer_model_input as select * from frame")
    lake = LocalLake(root=str(root / "lake"))
    lake.write_parquet(f"oracle/customers/snapshot_week={WEEK}/truth.parquet", oracle)
    resources = {"lake": lake, "warehouse": DuckDBWarehouse(path=str(path)), "writer_lease": WriterLease(lake=lake)}
    first = dg.materialize([train_models], partition_key=WEEK, resources=resources)
    refused = dg.materialize([train_models], partition_key=WEEK, resources=resources,
                             selection=[MODEL_KEYS["churn_model"], MODEL_KEYS["segment_model"]],
                             run_config={"ops": {"train_models": {"config": {"promotion_tolerance": -0.5}}}})
    return first, refused, lake


def _metadata(result, name):
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == MODEL_KEYS[name])
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def _gate(result, name):
    return next(c for c in result.get_asset_check_evaluations() if c.asset_key == MODEL_KEYS[name])


@pytest.mark.parametrize("name", list(MODEL_KEYS))
def test_a_model_page_shows_headline_metrics_rounded_the_card_inline_and_the_decision(trained_pages, name):
    first, _, lake = trained_pages
    meta = _metadata(first, name)
    primary = MODEL_KINDS[name].primary_metric
    assert len(meta) <= 16, sorted(meta)  # a few rows, not ~28
    assert list(meta)[:2] == ["decision", "model_card"]
    # headline metrics: the primary one first, numbers (plotted across runs), 4 significant digits
    headline = [k for k in meta if k.startswith("test_") and k != "test_rows"]
    assert headline[0] == f"test_{primary}"
    assert [k.removeprefix("test_") for k in headline] == list(evaluation.HEADLINE_METRICS[name])
    for key, value in meta.items():
        if isinstance(value, float):
            assert _rounded(value), (key, value)
    assert isinstance(meta[f"test_{primary}"], float | int) and f"baseline_{primary}" in meta
    # counts are integers
    assert isinstance(meta["test_rows"], int) and isinstance(meta["train_rows"], int)
    assert meta["test_rows"] + meta["train_rows"] < 30_000
    if name == "segment_model":
        assert isinstance(meta["test_k"], int) and 3 <= meta["test_k"] <= 8
    # the decision in words, on the page and as the gate's description
    assert meta["decision"].startswith("promoted: ")
    if name != "anomaly_model":
        assert meta["decision"].startswith("promoted: beats the naive baseline by ")
    assert _gate(first, name).description == meta["decision"]
    # the card inline (the UI shows markdown inline below 1,000 characters), the full card behind a link
    assert len(meta["model_card"]) < evaluation.INLINE_CARD_CHARS
    assert meta["model_card"].startswith("**Promoted: ")
    assert "| test | model | naive baseline | oracle ceiling |" in meta["model_card"]
    version = meta["version"]
    assert meta["full_model_card"] == lake.read_bytes(f"models/{name}/{version}/card.md").decode()
    assert f"Decision: {meta['decision']}." in meta["full_model_card"]
    report = json.loads(lake.read_bytes(f"models/{name}/{version}/metrics.json"))
    assert report["decision"] == meta["decision"]
    assert meta[f"test_{primary}"] == evaluation.round_sig(report["test"][primary])  # full precision in the registry


def test_the_churn_page_says_how_calibrated_and_which_way_the_drivers_push(trained_pages):
    first, _, _ = trained_pages
    meta = _metadata(first, "churn_model")
    assert isinstance(meta["test_auc"], float) and isinstance(meta["oracle_auc"], float)
    assert isinstance(meta["distinct_probabilities"], int) and meta["distinct_probabilities"] > 1000
    assert "distinct probabilities for" in meta["model_card"]
    assert "churn risk (ρ" in meta["model_card"]  # the top features' direction
    card = meta["full_model_card"]
    assert "| served: isotonic, interpolated within its steps |" in card
    assert "| plain isotonic steps (before interpolation) |" in card
    assert "raises churn risk for" in card and "lowers churn risk for" in card
    assert "PROMOTED: first version: auc" in card  # the line the knowledge base reads


def test_a_refused_challenger_says_so_and_who_keeps_serving(trained_pages):
    first, refused, _ = trained_pages
    for name in ("churn_model", "segment_model"):
        champion = _metadata(first, name)["version"]
        meta = _metadata(refused, name)
        assert meta["decision"].startswith("refused: it beats the naive baseline by ")
        assert "better than the champion's" in meta["decision"]
        assert meta["decision"].endswith(f"the champion {champion} keeps serving")
        assert meta["serving"] == champion and meta["promoted"] is False
        assert meta["model_card"].startswith("**Refused: ")
        gate = _gate(refused, name)
        assert not gate.passed and gate.description == meta["decision"]
        assert gate.metadata["champion"].value == evaluation.round_sig(gate.metadata["champion"].value)


def test_decision_words():
    def words(kind, promote, challenger, baseline, champion=None, tolerance=0.02, previous=None):
        decision = GateDecision(promote, "", kind.primary_metric, challenger, baseline, champion, tolerance)
        return evaluation.decision_words(kind, decision, previous)

    assert words(ChurnModel, True, 0.7573, 0.5) == (
        "promoted: beats the naive baseline by 0.2573 AUC (0.7573 vs 0.5); it is the first version and serves "
        "from now on")
    assert words(EngagementModel, True, 0.0775, 0.1781, 0.0780, previous="v1") == (
        "promoted: beats the naive baseline by 0.1006 RMSE (0.0775 vs 0.1781) and beats the champion's 0.078; "
        "it serves from now on")
    assert words(ChurnModel, True, 0.75, 0.5, 0.755, previous="v1").endswith(
        "and is within 2% of the champion's 0.755; it serves from now on")
    assert words(ChurnModel, False, 0.70, 0.5, 0.80, previous="v1") == (
        "refused: it beats the naive baseline by 0.2 AUC (0.7 vs 0.5), but AUC 0.7 is 12.5% worse than the "
        "champion's 0.8 (2% allowed); the champion v1 keeps serving")
    assert words(ChurnModel, False, 0.49, 0.5) == (
        "refused: AUC 0.49 does not beat the naive baseline's 0.5; there is no champion yet, so the naive "
        "baseline serves")
    assert words(AnomalyModel, False, 0.06, 0.02, previous="v1") == (
        "refused: flags 6.0% of test customers, outside the accepted 1%–4%; the champion v1 keeps serving")
    # the words agree with the gate
    decision = promotion_decision(ChurnModel, {"auc": 0.75}, {"auc": 0.5}, {"auc": 0.80})
    assert evaluation.decision_words(ChurnModel, decision, "v1").startswith("refused: ")


def test_headline_rounding():
    assert evaluation.round_sig(0.757294893) == 0.7573 and evaluation.round_sig(12345.678) == 12350.0
    assert evaluation.round_sig(0.0025448) == 0.002545 and evaluation.round_sig(float("nan")) is None
    rep = {"test": {"silhouette": 0.17912345, "k": 3.0}}
    assert evaluation.headline("segment_model", rep) == {"silhouette": 0.1791, "k": 3}
    assert isinstance(evaluation.headline("segment_model", rep)["k"], int)


# --- segment names


REAL_RUN = {  # the centroids of .lake/models/segment_model/*/card.md (100,000 customers, week 2026-11-16)
    "Spenders & gig seekers": [-0.29, -0.36, -0.24, -0.38, -0.38, +0.37, +0.78, +0.08],
    "Daters & creators": [+0.88, +1.06, +0.74, +1.22, +1.23, +0.03, +0.14, +0.49],
    "Casual": [-0.21, -0.23, -0.18, -0.31, -0.32, -0.53, -1.17, -0.45],
}


def _profile(values) -> dict[str, float]:
    return dict(zip(SEGMENT_DIMENSIONS, values, strict=True))


def test_the_real_run_s_segments_get_names_that_match_their_centroids():
    """The old rule called a segment 0.37 sd above average in gig applications "gig seekers", and one
    1.17 sd below average in revenue "Casual"."""
    names = [name for name, _ in segment_names([_profile(v) for v in REAL_RUN.values()])]
    assert names == ["Spenders", "Daters & creators", "Low spending & gig seeking"]
    assert segment_name(_profile([-1.0] * 7 + [0.2]))[0] == "Dormant"
    assert segment_name(_profile([0.3, -0.4] + [0.0] * 6))[0] == "Average users"


def _assert_matches(name: str, profile: dict[str, float], named_after: list[dict]):
    """Every dimension a name stands for is at least SEGMENT_MARKED_SD from the mean on the side it
    says; the named high (low) dimensions are the highest (lowest) ones; the name's words are theirs."""
    for n in named_after:
        z = profile[n["dimension"]]
        assert (z >= SEGMENT_MARKED_SD) if n["side"] == "high" else (z <= -SEGMENT_MARKED_SD), (name, n)
        assert n["z"] == round(z, 2)
    # strongest first; equal values by dimension name
    high = sorted((d for d, z in profile.items() if z >= SEGMENT_MARKED_SD), key=lambda d: (-profile[d], d))
    low = sorted((d for d, z in profile.items() if z <= -SEGMENT_MARKED_SD), key=lambda d: (profile[d], d))
    if high:
        base = high[:2]
        assert name.lower().startswith(SEGMENT_DIMENSIONS[high[0]].lower())
        if len(high) > 1:
            assert f"& {SEGMENT_DIMENSIONS[high[1]].lower()}" in name
    elif len(low) >= 6:
        base = low
        assert name.startswith("Dormant")
    elif low:
        base = low[:2]
        assert name.startswith("Low " + " & ".join(SEGMENT_ASPECTS[d] for d in base))
    else:
        base = []
        assert name.startswith("Average users")
    assert [n["dimension"] for n in named_after[:len(base)]] == base
    for n in named_after[len(base):]:  # qualifiers of names that would clash
        assert f"{n['side']} {SEGMENT_ASPECTS[n['dimension']]}" in name


def test_any_centroids_get_unique_names_that_match_them():
    rng = np.random.default_rng(3)
    for _ in range(300):
        k = int(rng.integers(3, 9))
        centers = np.round(rng.normal(0, rng.uniform(0.2, 1.2), size=(k, len(SEGMENT_DIMENSIONS))), 2)
        if rng.random() < 0.2:
            centers[1] = centers[0]  # identical centroids still get distinct names
        profiles = [_profile(c) for c in centers]
        named = segment_names(profiles)
        assert len({n for n, _ in named}) == k
        for (name, after), profile in zip(named, profiles, strict=True):
            _assert_matches(name.split(" #")[0], profile, after)


def test_the_trained_segment_model_names_by_the_documented_rule(trained, parts, model_input):
    model: SegmentModel = trained["segment_model"]
    for profile, name in zip(model.profiles, model.names, strict=True):
        assert profile["name"] == name
        _assert_matches(name.split(" #")[0], profile["profile_z"], profile["named_after"])
    card = evaluation.model_card(evaluation.report(model, parts, model_input[1], None), promotion_decision(
        SegmentModel, {"silhouette": 0.2}, {"silhouette": 0.0}, None), WEEK, "0" * 16)
    assert "### How segments are named" in card and "at least 0.5 sd from the mean" in card
    assert "| segment | share | named after |" in card


# --- calibration


def test_interpolated_isotonic_is_strictly_increasing_and_keeps_the_step_values():
    rng = np.random.default_rng(0)
    score = rng.normal(size=5000)
    label = (rng.random(5000) < 1 / (1 + np.exp(-2 * score))).astype(float)
    x, y = fit_interpolated_isotonic(score, label)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0) and 0 <= y[0] and y[-1] <= 1
    grid = np.sort(rng.normal(size=2000))
    probability = np.interp(grid, x, y)
    inside = (grid > x[0]) & (grid < x[-1])
    assert np.all(np.diff(probability[inside]) > 0)  # distinct scores, distinct probabilities


def test_churn_probabilities_keep_their_ranking_and_stay_calibrated(trained, parts):
    churn: ChurnModel = trained["churn_model"]
    cal = evaluation.calibration(churn, parts)
    served, steps, raw = cal["served"], cal["isotonic_steps"], cal["uncalibrated"]
    assert cal["test_rows"] == len(parts["test"])
    # resolution: plain isotonic steps give a few dozen values; interpolated, as many as the booster
    assert steps["distinct_probabilities"] < 300
    assert served["distinct_probabilities"] >= 0.95 * raw["distinct_probabilities"] > 1000
    assert served["auc"] == pytest.approx(raw["auc"], abs=1e-5)  # monotone: the booster's ranking (bar the tails)
    assert served["auc"] >= steps["auc"]
    # as calibrated as the steps (4,500 test rows: ECE moves by a few thousandths with the bins)
    assert served["brier"] <= steps["brier"] + 1e-4
    assert served["ece"] <= steps["ece"] + 0.005 and served["ece"] < 0.03
    assert churn.evaluate(parts["test"])["ece"] == served["ece"]


def test_a_version_with_plain_isotonic_steps_still_scores(trained, parts):
    """Champions registered before interpolation hold isotonic steps on the booster's probability."""
    from sklearn.isotonic import IsotonicRegression

    churn: ChurnModel = trained["churn_model"]
    valid, test = parts["valid"], parts["test"]
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(churn.raw_predict(valid),
                                                                              churn._label(valid))
    legacy = ChurnModel.from_files({**churn.to_files(), "calibration.json": json.dumps(
        {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}).encode()})
    np.testing.assert_allclose(legacy.probability(test), iso.predict(churn.raw_predict(test)), atol=1e-12)
    again = ChurnModel.from_files(churn.to_files())
    np.testing.assert_array_equal(again.probability(test), churn.probability(test))


# --- drivers with a direction


def test_importance_says_which_way_each_feature_pushes(trained, parts, model_input):
    churn: ChurnModel = trained["churn_model"]
    summary = churn.shap_summary(parts["test"], 500)
    top = next(iter(summary.values()))
    assert {"mean_abs", "share_raising", "mean_when_raising", "mean_when_lowering", "value_correlation"} <= set(top)
    assert top["mean_when_raising"] >= 0 >= top["mean_when_lowering"] and 0 <= top["share_raising"] <= 1
    assert list(churn.global_importance(parts["test"], 500)) == list(summary)
    directions = evaluation.report(churn, parts, model_input[1], None)["importance_direction"]
    words = [evaluation.higher_values_words("churn_model", d) for d in directions.values()]
    assert all(w.startswith(("higher values raise churn risk", "higher values lower churn risk",
                             "no single direction", "depends on the level")) for w in words)
    assert any("lower churn risk" in w for w in words) and any("raise churn risk" in w for w in words)


def test_the_at_risk_drivers_are_counted_by_direction(trained, parts):
    predictions = scoring.score(parts["test"], {name: (m, "v1") for name, m in trained.items()})
    table = scoring.driver_directions(predictions)
    at_risk = predictions[predictions["churn_probability"] >= scoring.AT_RISK_CHURN_PROBABILITY]
    assert table["customers"].sum() == len(at_risk) > 0
    assert (table["raises"] + table["lowers"] <= table["customers"]).all()
    assert table["customers"].is_monotonic_decreasing
    assert scoring.direction_words(0.4123) == "raises churn risk (+0.412 log-odds)"
    assert scoring.direction_words(-0.2) == "lowers churn risk (-0.2 log-odds)"
    assert isinstance(metrics.distinct_values(pd.Series([0.1, 0.1, 0.2])), int)
