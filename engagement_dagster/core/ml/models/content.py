"""The primary content category: a multi-class XGBoost classifier; top-3 categories per customer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from engagement_dagster.core.ml import metrics
from engagement_dagster.core.ml.models.base import FeatureSpec, XGBoostModel, booster_from

if TYPE_CHECKING:
    import xgboost as xgb


class ContentRecommender(XGBoostModel):
    name = "content_recommender"
    target = "content_category_primary"
    primary_metric, higher_is_better = "top3_accuracy", True
    primary_is_share = True  # a share of test rows: the gate asks for more than its noise margin
    description = "XGBoost multiclass (softmax) over content categories, served as the top 3 categories."
    params: ClassVar[dict] = {"objective": "multi:softprob", "eval_metric": "mlogloss", "eta": 0.5, "max_depth": 4}
    max_rounds = 150  # one tree per class per round: 12 classes cost 12× a binary round

    def __init__(self, spec: FeatureSpec, booster: xgb.Booster | None = None, classes: list[str] | None = None):
        super().__init__(spec, booster)
        self.classes = classes

    def _label(self, frame: pd.DataFrame) -> np.ndarray:
        codes = pd.Categorical(frame[self.target], categories=self.classes).codes
        return codes.astype("float32")

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> ContentRecommender:
        self.classes = sorted(train[self.target].astype(str).unique())
        valid = valid[valid[self.target].isin(self.classes)]
        self.params = {**self.params, "num_class": len(self.classes)}
        return super().fit(train, valid)

    def proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.raw_predict(frame).reshape(len(frame), len(self.classes))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        top = np.argsort(-self.proba(frame), axis=1)[:, :3]
        names = np.array(self.classes)[top]
        return pd.DataFrame({f"recommended_category_{i + 1}": names[:, i] for i in range(3)}, index=frame.index)

    @classmethod
    def naive_params(cls, train: pd.DataFrame) -> dict:
        counts = train[cls.target].astype(str).value_counts()
        return {"popularity": sorted(counts.index, key=lambda c: (-counts[c], c))}  # most popular first

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        top = (params["popularity"] * 3)[:3]  # fewer than 3 categories: repeat
        return pd.DataFrame({f"recommended_category_{i + 1}": top[i] for i in range(3)}, index=frame.index)

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        codes = self._label(test).astype(int)
        proba = self.proba(test)
        return {"top1_accuracy": metrics.top_k_accuracy(codes, proba, 1),
                "top3_accuracy": metrics.top_k_accuracy(codes, proba, 3)}

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        top = self.naive_params(train)["popularity"][:3]  # always the most popular categories
        truth = test[self.target].astype(str)
        return {"top1_accuracy": float((truth == top[0]).mean()), "top3_accuracy": float(truth.isin(top).mean())}

    def to_files(self) -> dict[str, bytes]:
        return {**super().to_files(), "classes.json": json.dumps(self.classes).encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ContentRecommender:
        return cls(FeatureSpec.from_json(files["features.json"].decode()), booster_from(files["model.ubj"]),
                   json.loads(files["classes.json"]))
