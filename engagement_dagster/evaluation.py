"""One model's report: test metrics beside the naive baseline and the oracle ceiling, global
importance (exact SHAP), fairness gaps, and the markdown model card built from it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engagement_dagster import metrics
from engagement_dagster.feature_roles import FeatureRoles
from engagement_dagster.registry import GateDecision
from engagement_dagster.training import (
    ChurnModel,
    ContentRecommender,
    EngagementModel,
    LtvModel,
    ModelKind,
    _XGBoostModel,
)

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
    if isinstance(model, _XGBoostModel):
        rows = 300 if isinstance(model, ContentRecommender) else 1000  # 12 classes: 12× the SHAP cost
        importance = model.global_importance(test, rows)
        out["importance_mean_abs_shap"] = dict(list(importance.items())[:15])
    if getattr(model, "profiles", None):
        out["segments"] = model.profiles
    if isinstance(model, ChurnModel):
        out["lift_by_decile"] = metrics.lift_by_decile(test[model.target].to_numpy(), model.probability(test))
    return out


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def model_card(rep: dict, decision: GateDecision, week: str, fingerprint: str) -> str:
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
        f"{'PROMOTED' if decision.promote else 'REFUSED'}: {decision.reason}.",
    ]
    if rep["fairness"]:
        lines += ["", "## Fairness gaps (test split)", "", "| gap | value |", "|---|---|",
                  *(f"| {k} | {v:.4f} |" for k, v in rep["fairness"].items())]
    if rep.get("lift_by_decile"):
        lines += ["", "## Lift by predicted-risk decile (highest first)", "",
                  " · ".join(f"{x:.2f}" for x in rep["lift_by_decile"])]
    if rep.get("importance_mean_abs_shap"):
        lines += ["", "## Global importance (mean |SHAP|, exact TreeSHAP on a test sample)", "",
                  "| feature | mean abs contribution |", "|---|---|",
                  *(f"| {k} | {v:.4g} |" for k, v in list(rep["importance_mean_abs_shap"].items())[:10])]
    if rep.get("segments"):
        dims = list(rep["segments"][0]["profile_z"])
        lines += ["", "## Segments (centroids in standard deviations from the mean)", "",
                  "| segment | share | " + " | ".join(dims) + " |", "|---" * (len(dims) + 2) + "|",
                  *(f"| {s['name']} | {s['share']:.1%} | "
                    + " | ".join(f"{s['profile_z'][d]:+.2f}" for d in dims) + " |"
                    for s in rep["segments"])]
    if rep["fit"].get("silhouette_by_k"):
        lines += ["", "## Choice of k (silhouette on a train sample)", "",
                  " · ".join(f"k={k}: {v:.3f}" for k, v in rep["fit"]["silhouette_by_k"].items())]
    return "\n".join(lines) + "\n"
