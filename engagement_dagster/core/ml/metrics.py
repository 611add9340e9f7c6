"""Model metrics that mean something: computed on the test split only, beside naive baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd

# scikit-learn, and XGBoost (which imports it), are imported where they are used, here and in the models:
# ~0.9 s that a process loading only the Dagster definitions (the UI, a run's start) need not pay
# (tests/test_idle_work.py checks).


def regression(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, r2_score

    y, pred = np.asarray(y, float), np.asarray(pred, float)
    return {"rmse": float(np.sqrt(np.mean((y - pred) ** 2))), "mae": float(mean_absolute_error(y, pred)),
            "r2": float(r2_score(y, pred))}


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate − mean predicted| over equal-width probability bins, weighted by count."""
    y, prob = np.asarray(y, float), np.asarray(prob, float)
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, y, bins) - np.bincount(idx, prob, bins))
    return float(gap.sum() / max(counts.sum(), 1))


def distinct_values(prob: np.ndarray) -> int:
    """How many different probabilities a model gives: customers with the same one cannot be ranked."""
    return len(np.unique(np.asarray(prob, float)))


def lift_by_decile(y: np.ndarray, prob: np.ndarray) -> list[float]:
    """Churn rate in each predicted-risk decile (highest risk first) divided by the overall rate."""
    order = np.argsort(-np.asarray(prob), kind="stable")
    deciles = np.array_split(np.asarray(y, float)[order], 10)
    base = float(np.mean(y)) or 1.0
    return [float(d.mean() / base) for d in deciles]


def binary(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    lift = lift_by_decile(y, prob)
    return {"auc": float(roc_auc_score(y, prob)), "pr_auc": float(average_precision_score(y, prob)),
            "brier": float(brier_score_loss(y, prob)), "ece": expected_calibration_error(y, prob),
            "lift_top_decile": lift[0], "base_rate": float(np.mean(y))}


def top_k_accuracy(y_codes: np.ndarray, proba: np.ndarray, k: int) -> float:
    top = np.argsort(-proba, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(y_codes)[:, None]).any(axis=1)))


def fairness_gaps(frame: pd.DataFrame, group_columns: tuple[str, ...], y: str, decision: str) -> dict[str, float]:
    """Largest between-group differences of the positive-decision rate (demographic parity) and of
    the true-positive rate (equal opportunity), per protected attribute. Groups under 30 rows are
    left out: their rates are noise."""
    gaps: dict[str, float] = {}
    for column in group_columns:
        groups = frame.groupby(column, observed=True)
        sizes = groups.size()
        big = sizes[sizes >= 30].index
        rate = groups[decision].mean().loc[big]
        positives = frame[frame[y] == 1].groupby(column, observed=True)[decision].mean()
        tpr = positives.reindex(big).dropna()
        gaps[f"demographic_parity_gap_{column}"] = float(rate.max() - rate.min()) if len(rate) > 1 else 0.0
        gaps[f"equal_opportunity_gap_{column}"] = float(tpr.max() - tpr.min()) if len(tpr) > 1 else 0.0
    return gaps
