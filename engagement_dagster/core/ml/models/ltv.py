"""Lifetime value (USD): XGBoost regression with a Tweedie loss."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from engagement_dagster.core.ml import metrics
from engagement_dagster.core.ml.models.base import XGBoostModel


class LtvModel(XGBoostModel):
    name = "ltv_model"
    target = "lifetime_value_usd"
    primary_metric, higher_is_better = "mae", False
    # LTV is right-skewed and can be 0: a Tweedie loss (log link) models the mean directly, with no
    # retransformation bias of a log-target regression.
    description = "XGBoost regression of lifetime value (USD), Tweedie loss with log link (power 1.8)."
    params: ClassVar[dict] = {"objective": "reg:tweedie", "tweedie_variance_power": 1.8, "eta": 0.15, "max_depth": 5}

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"predicted_lifetime_value_usd": self.raw_predict(frame)}, index=frame.index)

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        pred = self.predict(test)["predicted_lifetime_value_usd"].to_numpy()
        out = metrics.regression(test[self.target], pred)
        out["rmse_log1p"] = metrics.regression(np.log1p(test[self.target]), np.log1p(pred))["rmse"]
        return out

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        const = self.naive_predict(self.naive_params(train), test)["predicted_lifetime_value_usd"].to_numpy()
        out = metrics.regression(test[self.target], const)
        out["rmse_log1p"] = metrics.regression(np.log1p(test[self.target]), np.log1p(const))["rmse"]
        return out

    @classmethod
    def naive_params(cls, train: pd.DataFrame) -> dict:
        return {"median": float(train[cls.target].median())}  # the best constant for MAE

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"predicted_lifetime_value_usd": np.full(len(frame), params["median"])}, index=frame.index)
