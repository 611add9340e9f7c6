"""One model's report: test metrics beside the naive baseline and the oracle ceiling, global
importance (exact SHAP) with the direction of each feature's effect, fairness gaps, calibration, the
promotion decision in words, and the markdown model cards built from it (the full card, and the short
one the Dagster UI shows inline)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engagement_dagster.core.ml import metrics
from engagement_dagster.core.ml.feature_roles import FeatureRoles
from engagement_dagster.core.ml.models.base import ModelKind, XGBoostModel
from engagement_dagster.core.ml.models.churn import CALIBRATION_SPREAD, ChurnModel
from engagement_dagster.core.ml.models.content import ContentRecommender
from engagement_dagster.core.ml.models.engagement import EngagementModel
from engagement_dagster.core.ml.models.ltv import LtvModel
from engagement_dagster.core.ml.models.segment import SEGMENT_NAMING_RULE
from engagement_dagster.core.ml.registry import GateDecision

# How a metric is written for a reader.
METRIC_LABELS = {"rmse": "RMSE", "mae": "MAE", "r2": "R²", "rmse_log1p": "RMSE of log1p", "auc": "AUC",
                 "pr_auc": "PR-AUC", "brier": "Brier", "ece": "ECE", "lift_top_decile": "top-decile lift",
                 "base_rate": "base rate", "top1_accuracy": "top-1 accuracy", "top3_accuracy": "top-3 accuracy",
                 "silhouette": "silhouette", "k": "k", "flagged_share": "flagged share"}
# The few test metrics each model's page shows, the primary (gate) metric first.
HEADLINE_METRICS = {"engagement_model": ("rmse", "r2"), "churn_model": ("auc", "pr_auc", "brier", "ece"),
                    "ltv_model": ("mae", "r2"), "content_recommender": ("top3_accuracy", "top1_accuracy"),
                    "segment_model": ("silhouette", "k"), "anomaly_model": ("flagged_share",)}
COUNT_METRICS = {"k"}  # integers, whatever type the report holds them in
# What a positive / negative SHAP contribution does to each single-output model's prediction.
EFFECT_WORDS = {"churn_model": ("raises churn risk", "lowers churn risk"),
                "engagement_model": ("raises predicted engagement", "lowers predicted engagement"),
                "ltv_model": ("raises predicted LTV", "lowers predicted LTV")}
SIGNIFICANT_DIGITS = 4
DIRECTION_CORRELATION = 0.3  # |Spearman ρ| between a feature and its contribution for "higher values …"
INLINE_CARD_CHARS = 1000  # the Dagster UI shows markdown metadata inline below this length, else behind a link

HIGH_ENGAGEMENT = 0.7  # the "high engagement" decision fairness is measured on (dbt var high_engagement_score)
CHURN_DECISION = 0.5


def oracle_ceiling(model: ModelKind, test: pd.DataFrame, oracle: pd.DataFrame | None) -> dict[str, float] | None:
    """The metrics the generator's own truth scores on the same test rows: the best any model
    could do. None for a user's data (no truth) and for the unsupervised models."""
    if oracle is None:
        return None
    truth = oracle.set_index("customer_id").reindex(test["customer_id"])
    if truth.isna().any().any():
        return None
    if isinstance(model, EngagementModel):
        return metrics.regression(test[model.target], truth["expected_engagement_score"])
    if isinstance(model, LtvModel):
        pred = truth["expected_lifetime_value_usd"].to_numpy()
        out = metrics.regression(test[model.target], pred)
        out["rmse_log1p"] = metrics.regression(np.log1p(test[model.target]), np.log1p(pred))["rmse"]
        return out
    if isinstance(model, ChurnModel):
        return metrics.binary(test[model.target].to_numpy(), truth["true_churn_probability"].to_numpy())
    if isinstance(model, ContentRecommender):
        columns = [f"affinity_{c}" for c in model.classes]
        if not set(columns) <= set(truth.columns):
            return None
        codes = model._label(test).astype(int)
        affinity = truth[columns].to_numpy()
        return {"top1_accuracy": metrics.top_k_accuracy(codes, affinity, 1),
                "top3_accuracy": metrics.top_k_accuracy(codes, affinity, 3)}
    return None


def fairness(model: ModelKind, test: pd.DataFrame, roles: FeatureRoles) -> dict[str, float]:
    """Gaps by each protected attribute (gender, age band) for the model's decision, if it has one."""
    if isinstance(model, ChurnModel):
        frame = test[list(roles.protected)].assign(
            y=test[model.target].to_numpy(), decision=(model.probability(test) >= CHURN_DECISION).astype(float))
    elif isinstance(model, EngagementModel):
        pred = model.predict(test)["predicted_engagement_score"].to_numpy()
        frame = test[list(roles.protected)].assign(
            y=(test[model.target] >= HIGH_ENGAGEMENT).astype(int).to_numpy(),
            decision=(pred >= HIGH_ENGAGEMENT).astype(float))
    else:
        return {}
    return metrics.fairness_gaps(frame, roles.protected, "y", "decision")


def round_sig(value: float | None, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """A figure as a person reads it: `digits` significant digits (0.757294 → 0.7573)."""
    if value is None or not np.isfinite(value):
        return None
    return float(f"{float(value):.{digits}g}")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def headline(name: str, rep: dict) -> dict[str, float | int]:
    """The model's headline test metrics, rounded to 4 significant digits (counts as integers)."""
    out = {}
    for metric in HEADLINE_METRICS[name]:
        value = rep["test"].get(metric)
        if value is not None:
            out[metric] = round(value) if metric in COUNT_METRICS else round_sig(value)
    return out


def decision_words(kind: type[ModelKind], decision: GateDecision, previous_champion: str | None) -> str:
    """The promotion decision as a sentence: "promoted: beats the naive baseline by …" or
    "refused: …, the champion keeps serving"."""
    label = _label(decision.metric)
    value, base, champ, tolerance = decision.challenger, decision.baseline, decision.champion, decision.tolerance
    if decision.promote:
        then = "; it serves from now on"
    elif previous_champion:
        then = f"; the champion {previous_champion} keeps serving"
    else:
        then = "; there is no champion yet, so the naive baseline serves"
    if kind.name == "anomaly_model":
        band = f"{0.5 * base:.0%}–{2 * base:.0%}"
        where = "within" if decision.promote else "outside"
        verdict = "promoted" if decision.promote else "refused"
        return f"{verdict}: flags {value:.1%} of test customers, {where} the accepted {band}{then}"
    higher = kind.higher_is_better
    beats_baseline = value > base if higher else value < base
    if not beats_baseline:
        return f"refused: {label} {_fmt(value)} does not beat the naive baseline's {_fmt(base)}{then}"
    if not decision.promote and abs(value - base) <= decision.noise_margin:
        return (f"refused: {label} {_fmt(value)} vs the naive baseline's {_fmt(base)} is a difference chance alone "
                f"makes on these test rows (margin ±{_fmt(decision.noise_margin)}){then}")
    margin = f"beats the naive baseline by {_fmt(abs(value - base))} {label} ({_fmt(value)} vs {_fmt(base)})"
    if champ is None:
        return f"promoted: {margin}; it is the first version and serves from now on"
    better = value > champ if higher else value < champ
    if decision.promote:
        against = (f"beats the champion's {_fmt(champ)}" if better
                   else f"is within {tolerance:.0%} of the champion's {_fmt(champ)}")
        return f"promoted: {margin} and {against}{then}"
    if tolerance >= 0:
        worse = abs(value - champ) / abs(champ) if champ else float("inf")
        short = (f"{label} {_fmt(value)} is {worse:.1%} worse than the champion's {_fmt(champ)} "
                 f"({tolerance:.0%} allowed)")
    else:
        short = (f"{label} {_fmt(value)} is not {-tolerance:.0%} better than the champion's {_fmt(champ)}, "
                 "as the gate requires")
    return f"refused: it {margin}, but {short}{then}"


def calibration(model: ChurnModel, parts: dict[str, pd.DataFrame]) -> dict:
    """The served calibration beside plain isotonic steps (what versions before interpolation served)
    and the booster's own probability, on the test split: distinct probabilities, ECE, Brier, AUC.
    The steps are fitted here on the same valid rows, so the three are compared on the same data."""
    from sklearn.isotonic import IsotonicRegression

    valid, test = parts["valid"], parts["test"]
    y = test[model.target].to_numpy()
    raw_valid, raw_test = model.raw_predict(valid), model.raw_predict(test)
    steps = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw_valid, model._label(valid))

    def measure(prob: np.ndarray) -> dict:
        scores = metrics.binary(y, prob)
        return {"distinct_probabilities": metrics.distinct_values(prob), "ece": scores["ece"],
                "brier": scores["brier"], "auc": scores["auc"]}

    return {"method": "isotonic regression on the valid split, interpolated within its steps",
            "spread": CALIBRATION_SPREAD, "valid_rows": len(valid), "test_rows": len(test),
            "served": measure(model.probability(test)),
            "isotonic_steps": measure(steps.predict(raw_test)),
            "uncalibrated": measure(raw_test.astype("float64"))}


def report(model: ModelKind, parts: dict[str, pd.DataFrame], roles: FeatureRoles, oracle: pd.DataFrame | None) -> dict:
    train, test = parts["train"], parts["test"]
    out = {
        "model": model.name,
        "description": model.description,
        "rows": {name: len(part) for name, part in parts.items()},
        "fit": model.info,
        "test": model.evaluate(test),
        "baseline": model.baseline(train, test),
        "oracle_ceiling": oracle_ceiling(model, test, oracle),
        "fairness": fairness(model, test, roles),
    }
    if isinstance(model, XGBoostModel):
        rows = 300 if isinstance(model, ContentRecommender) else 1000  # 12 classes: 12× the SHAP cost
        summary = dict(list(model.shap_summary(test, rows).items())[:15])
        out["importance_mean_abs_shap"] = {f: s["mean_abs"] for f, s in summary.items()}
        if model.name in EFFECT_WORDS:
            out["importance_direction"] = {f: {k: v for k, v in s.items() if k != "mean_abs"}
                                           for f, s in summary.items()}
    if getattr(model, "profiles", None):
        out["segments"] = model.profiles
        out["segment_naming_rule"] = SEGMENT_NAMING_RULE
    if isinstance(model, ChurnModel):
        out["lift_by_decile"] = metrics.lift_by_decile(test[model.target].to_numpy(), model.probability(test))
        out["calibration"] = calibration(model, parts)
    return out


def higher_values_words(name: str, direction: dict) -> str:
    """ "higher values lower churn risk (ρ −0.96)", "no single direction (ρ +0.12)" or, for a
    categorical feature, "depends on the level"."""
    rho = direction.get("value_correlation")
    if rho is None:
        return "depends on the level"
    up, down = EFFECT_WORDS[name]
    if rho >= DIRECTION_CORRELATION:
        words = f"higher values {up.replace('raises', 'raise')}"
    elif rho <= -DIRECTION_CORRELATION:
        words = f"higher values {down.replace('lowers', 'lower')}"
    else:
        words = "no single direction"
    return f"{words} (ρ {rho:+.2f})"


def _importance_lines(rep: dict) -> list[str]:
    name, importance = rep["model"], list(rep["importance_mean_abs_shap"].items())[:10]
    directions = rep.get("importance_direction") or {}
    lines = ["", "## Global importance (mean |SHAP|, exact TreeSHAP on a test sample)", ""]
    if not directions:
        return [*lines, "| feature | mean abs contribution |", "|---|---|",
                *(f"| {k} | {v:.4g} |" for k, v in importance)]
    up, down = EFFECT_WORDS[name]
    lines += [(f"A feature's contribution to one customer's prediction {up} when positive and {down} when "
               "negative; ρ is the rank correlation between the feature's value and its contribution."), "",
              f"| feature | mean abs contribution | effect | {up} for | {down} for |", "|---|---|---|---|---|"]
    for feature, value in importance:
        d = directions.get(feature, {})
        share = d.get("share_raising", 0.0)
        lines.append(f"| {feature} | {value:.4g} | {higher_values_words(name, d)} "
                     f"| {share:.0%} of customers (mean {d.get('mean_when_raising', 0.0):+.3g}) "
                     f"| {1 - share:.0%} (mean {d.get('mean_when_lowering', 0.0):+.3g}) |")
    return lines


def _calibration_lines(cal: dict) -> list[str]:
    rows = [("served: isotonic, interpolated within its steps", cal["served"]),
            ("plain isotonic steps (before interpolation)", cal["isotonic_steps"]),
            ("none (the booster's own probability)", cal["uncalibrated"])]
    return ["", "## Calibration (churn probability, test split)", "",
            (f"Isotonic regression fitted on the valid split ({cal['valid_rows']:,} rows). Its plain steps give "
             f"every customer of a step the same probability; the served calibration keeps each step's value at "
             f"its centre and, within the step, follows the booster's score up to {cal['spread'] / 2:.1%} of the "
             f"way toward the neighbouring steps, so customers keep their ranking. On the "
             f"{cal['test_rows']:,} test customers:"), "",
            "| calibration | distinct probabilities | ECE | Brier | AUC |", "|---|---|---|---|---|",
            *(f"| {label} | {m['distinct_probabilities']:,} | {m['ece']:.4g} | {m['brier']:.4g} | {m['auc']:.4g} |"
              for label, m in rows)]


def _segment_lines(rep: dict) -> list[str]:
    dims = list(rep["segments"][0]["profile_z"])

    def named(s: dict) -> str:
        return ", ".join(f"{n['dimension']} {n['z']:+.2f}" for n in s.get("named_after", [])) or "–"

    return ["", "## Segments (centroids in standard deviations from the mean)", "",
            "| segment | share | named after | " + " | ".join(dims) + " |", "|---" * (len(dims) + 3) + "|",
            *(f"| {s['name']} | {s['share']:.1%} | {named(s)} | "
              + " | ".join(f"{s['profile_z'][d]:+.2f}" for d in dims) + " |" for s in rep["segments"]),
            "", "### How segments are named", "", rep.get("segment_naming_rule", SEGMENT_NAMING_RULE)]


def model_card(rep: dict, decision: GateDecision, week: str, fingerprint: str, words: str | None = None) -> str:
    """The full card (the registry's card.md). Its `- snapshot week:` and `PROMOTED:`/`REFUSED:` lines
    are what the knowledge base reads: keep them."""
    ceiling = rep["oracle_ceiling"] or {}
    lines = [
        f"# {rep['model']}",
        "",
        rep["description"],
        "",
        f"- snapshot week: {week}",
        "- rows: " + ", ".join(f"{k} {v:,}" for k, v in rep["rows"].items()),
        f"- training data fingerprint: `{fingerprint[:16]}`",
        "- fit: " + ", ".join(f"{k} {v}" for k, v in rep["fit"].items() if not isinstance(v, dict)),
        "",
        "## Test metrics (test split only)",
        "",
        "| metric | model | naive baseline | oracle ceiling |",
        "|---|---|---|---|",
        *(f"| {m} | {_fmt(v)} | {_fmt(rep['baseline'].get(m))} | {_fmt(ceiling.get(m))} |"
          for m, v in rep["test"].items()),
        "",
        ("The oracle ceiling scores the generator's ground truth on the same rows: the best any model "
         "could reach. It is blank for data without a known truth and for unsupervised models."),
        "",
        "## Promotion gate",
        "",
        *([f"Decision: {words}.", ""] if words else []),
        f"{'PROMOTED' if decision.promote else 'REFUSED'}: {decision.reason}.",
    ]
    if rep.get("calibration"):
        lines += _calibration_lines(rep["calibration"])
    if rep["fairness"]:
        lines += ["", "## Fairness gaps (test split)", "", "| gap | value |", "|---|---|",
                  *(f"| {k} | {v:.4f} |" for k, v in rep["fairness"].items())]
    if rep.get("lift_by_decile"):
        lines += ["", "## Lift by predicted-risk decile (highest first)", "",
                  " · ".join(f"{x:.2f}" for x in rep["lift_by_decile"])]
    if rep.get("importance_mean_abs_shap"):
        lines += _importance_lines(rep)
    if rep["model"] == "churn_model":
        lines += ["", "## Churn drivers of each customer", "",
                  ("customer_predictions names each customer's three churn drivers (churn_driver_1…3): the features "
                   "with the largest contributions to that customer's churn log-odds, before calibration. A positive "
                   "contribution raises churn risk, a negative one lowers it: a driver is not always a reason to "
                   "worry. Exact TreeSHAP for every customer with churn probability ≥ 0.5, Saabas contributions "
                   "for the others (churn_drivers_method).")]
    if rep.get("segments"):
        lines += _segment_lines(rep)
    if rep["fit"].get("silhouette_by_k"):
        lines += ["", "## Choice of k (silhouette on a train sample)", "",
                  " · ".join(f"k={k}: {v:.3f}" for k, v in rep["fit"]["silhouette_by_k"].items())]
    return "\n".join(lines) + "\n"


def inline_card(rep: dict, words: str) -> str:
    """The card's essentials in under INLINE_CARD_CHARS characters, so the Dagster UI shows them on the
    asset's page (longer markdown hides behind a link): the decision, the headline metrics beside the
    baseline and the oracle ceiling, and the calibration, the top features' effect or the segments."""
    name, ceiling = rep["model"], rep["oracle_ceiling"] or {}
    lines = [f"**{words[0].upper()}{words[1:]}.**", "", "| test | model | naive baseline | oracle ceiling |",
             "|---|---|---|---|"]
    for metric in HEADLINE_METRICS[name]:
        if metric in rep["test"]:
            lines.append(f"| {_label(metric)} | {_fmt(rep['test'][metric])} | {_fmt(rep['baseline'].get(metric))} "
                         f"| {_fmt(ceiling.get(metric))} |")
    extra = []
    if rep.get("calibration"):
        served = rep["calibration"]["served"]
        extra.append(f"Calibrated: {served['distinct_probabilities']:,} distinct probabilities for "
                     f"{rep['calibration']['test_rows']:,} test customers.")
    if rep.get("importance_direction"):
        top = list(rep["importance_direction"].items())[:3]
        extra.append("Top features: " + "; ".join(f"{f}: {higher_values_words(name, d)}" for f, d in top) + ".")
    elif rep.get("importance_mean_abs_shap"):
        extra.append("Top features: " + ", ".join(list(rep["importance_mean_abs_shap"])[:3]) + ".")
    if rep.get("segments"):
        extra.append("Segments: " + "; ".join(f"{s['name']} {s['share']:.0%}" for s in rep["segments"]) + ".")
    for line in extra:  # whatever fits; the full card has everything
        if len("\n".join([*lines, "", line])) < INLINE_CARD_CHARS:
            lines += ["", line]
    return "\n".join(lines)
