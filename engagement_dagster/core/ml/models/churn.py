"""30-day churn: an XGBoost classifier, calibrated by interpolated isotonic regression on `valid`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from engagement_dagster.core.ml import metrics
from engagement_dagster.core.ml.models.base import FeatureSpec, XGBoostModel, booster_from

if TYPE_CHECKING:
    import xgboost as xgb

# Within each fitted isotonic step, a probability moves with the booster's score at most this share of
# the way toward the neighbouring steps' values (toward 0 and 1 beyond the first and last step).
CALIBRATION_SPREAD = 0.25


def fit_interpolated_isotonic(score: np.ndarray, label: np.ndarray,
                              spread: float = CALIBRATION_SPREAD) -> tuple[list[float], list[float]]:
    """Isotonic regression of `label` on `score`, kept as a strictly increasing piecewise-linear map.

    Plain isotonic regression is a step function: every customer of a step gets the same probability
    (a few dozen to a few hundred values in all), which throws away the booster's ranking inside a
    step. Here each step of the fit spans the scores it pooled; its probability rises linearly across
    that span, from `spread`/2 of the way down toward the step below to `spread`/2 of the way up
    toward the step above, and between steps it rises linearly to the next step. A step's centre
    keeps the isotonic value, so calibration is that of the isotonic fit (measured on test against
    the plain steps in every churn report), and every distinct score keeps a distinct probability.
    Returns the knots (score, probability), for ``np.interp``."""
    from sklearn.isotonic import IsotonicRegression  # imported when used (core/ml/metrics.py says why)

    score, label = np.asarray(score, dtype="float64"), np.asarray(label, dtype="float64")
    fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(score, label).predict(score)
    levels, step = np.unique(fitted, return_inverse=True)  # the steps' values, increasing
    low, high = np.full(len(levels), np.inf), np.full(len(levels), -np.inf)
    np.minimum.at(low, step, score)
    np.maximum.at(high, step, score)
    below, above = np.r_[0.0, levels[:-1]], np.r_[levels[1:], 1.0]
    xs, ys = [], []
    for value, start, end, down, up in zip(levels, low, high, below, above, strict=True):
        if start == end:  # a step of one distinct score: one knot
            xs.append(start)
            ys.append(value)
        else:
            xs += [start, end]
            ys += [value - spread * (value - down) / 2, value + spread * (up - value) / 2]
    return [float(x) for x in xs], [float(y) for y in ys]


class ChurnModel(XGBoostModel):
    name = "churn_model"
    target = "churn_30_day"
    primary_metric, higher_is_better = "auc", True
    description = ("XGBoost binary classifier of 30-day churn (classes not rebalanced), probabilities "
                   "calibrated by isotonic regression on the valid split, interpolated within its steps so "
                   "that customers keep their ranking.")
    params: ClassVar[dict] = {"objective": "binary:logistic", "eval_metric": "logloss", "eta": 0.1, "max_depth": 4}
    # How a version's calibration.json maps the booster's output to a probability. Versions registered
    # before interpolation hold plain isotonic steps on the booster's probability (no "method" key).
    CALIBRATION_METHOD = "isotonic_interpolated"

    def __init__(self, spec: FeatureSpec, booster: xgb.Booster | None = None, calibration: dict | None = None):
        super().__init__(spec, booster)
        self.calibration = calibration

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> ChurnModel:
        super().fit(train, valid)
        x, y = fit_interpolated_isotonic(self.margin(valid), self._label(valid))
        self.calibration = {"method": self.CALIBRATION_METHOD, "score": "margin", "spread": CALIBRATION_SPREAD,
                            "x": x, "y": y}
        return self

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        cal = self.calibration
        if cal.get("score") == "margin":
            return np.interp(self.margin(frame).astype("float64"), cal["x"], cal["y"])
        return np.interp(self.raw_predict(frame), cal["x"], cal["y"])  # plain steps on the booster's probability

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"churn_probability": self.probability(frame)}, index=frame.index)

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        return metrics.binary(test[self.target].to_numpy(), self.probability(test))

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        naive = self.naive_predict(self.naive_params(train), test)
        return metrics.binary(test[self.target].to_numpy(), naive["churn_probability"].to_numpy())

    @classmethod
    def naive_params(cls, train: pd.DataFrame) -> dict:
        return {"rate": float(train[cls.target].mean())}

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"churn_probability": np.full(len(frame), params["rate"])}, index=frame.index)

    def to_files(self) -> dict[str, bytes]:
        return {**super().to_files(), "calibration.json": json.dumps(self.calibration).encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ChurnModel:
        return cls(FeatureSpec.from_json(files["features.json"].decode()), booster_from(files["model.ubj"]),
                   json.loads(files["calibration.json"]))
