"""Anomalies: an isolation forest on the model features (medians fill missing values)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engagement_dagster.core.ml.models.base import SEED, FeatureSpec, ModelKind, sklearn_bytes, sklearn_from

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest


class AnomalyModel(ModelKind):
    name = "anomaly_model"
    primary_metric, higher_is_better = "flagged_share", False
    contamination = 0.02
    description = ("Isolation forest (100 trees of 256 samples) on the numeric features; flags the 2% "
                   "most isolated customers of the training data's score distribution.")

    def __init__(self, spec: FeatureSpec, forest: IsolationForest | None = None, medians: dict | None = None):
        super().__init__(spec)
        self.forest, self.medians = forest, medians

    def _x(self, frame: pd.DataFrame) -> np.ndarray:
        return self.spec.matrix(frame).fillna(self.medians).to_numpy()

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> AnomalyModel:
        numeric = self.spec.matrix(train)
        self.medians = {c: float(v) for c, v in numeric.median().items()}
        from sklearn.ensemble import IsolationForest  # imported when used (core/ml/metrics.py says why)

        # In-process (n_jobs=1): joblib's worker start-up costs more than it saves at this size.
        self.forest = IsolationForest(n_estimators=100, max_samples=256, contamination=self.contamination,
                                      random_state=SEED, n_jobs=1).fit(self._x(train))
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        raw = self.forest.score_samples(self._x(frame))
        # forest.predict would score every row again: its rule is score_samples < offset_.
        return pd.DataFrame({"anomaly_score": -raw, "is_anomaly": raw < self.forest.offset_}, index=frame.index)

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        return {"flagged_share": float(self.predict(test)["is_anomaly"].mean())}

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        return {"flagged_share": self.contamination}

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"anomaly_score": np.zeros(len(frame)), "is_anomaly": np.zeros(len(frame), dtype=bool)},
                            index=frame.index)  # flags no one

    def to_files(self) -> dict[str, bytes]:
        return {"model.joblib": sklearn_bytes({"forest": self.forest, "medians": self.medians}),
                "features.json": self.spec.to_json().encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> AnomalyModel:
        parts = sklearn_from(files["model.joblib"])
        return cls(FeatureSpec.from_json(files["features.json"].decode()), parts["forest"], parts["medians"])
