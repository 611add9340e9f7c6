"""The engagement score (a fraction 0–1): XGBoost regression, squared error."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from engagement_dagster.core.ml import metrics
from engagement_dagster.core.ml.models.base import XGBoostModel


class EngagementModel(XGBoostModel):
    name = "engagement_model"
    target = "engagement_score"
    primary_metric, higher_is_better = "rmse", False
    description = "XGBoost regression of the engagement score (a fraction 0–1), squared error."
    params: ClassVar[dict] = {"objective": "reg:squarederror", "eta": 0.15, "max_depth": 5}

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"predicted_engagement_score": np.clip(self.raw_predict(frame), 0, 1)}, index=frame.index)

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        return metrics.regression(test[self.target], self.predict(test)["predicted_engagement_score"])

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        naive = self.naive_predict(self.naive_params(train), test)
        return metrics.regression(test[self.target], naive["predicted_engagement_score"])

    @classmethod
    def naive_params(cls, train: pd.DataFrame) -> dict:
        return {"mean": float(train[cls.target].mean())}

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"predicted_engagement_score": np.full(len(frame), params["mean"])}, index=frame.index)
