"""Training: the six models by name, a new model for a week, the naive baseline that serves while a
model has no champion, and the splits. Each model lives in its own file under `models/`: fit on
`train`, early-stop and calibrate on `valid`, report on `test`, with the interface in `models/base.py`.
Knows nothing of Dagster or of where data lives."""

from __future__ import annotations

import json

import pandas as pd

from engagement_dagster.core.ml.feature_roles import FeatureRoles
from engagement_dagster.core.ml.models.anomaly import AnomalyModel
from engagement_dagster.core.ml.models.base import FeatureSpec, ModelKind
from engagement_dagster.core.ml.models.churn import ChurnModel
from engagement_dagster.core.ml.models.content import ContentRecommender
from engagement_dagster.core.ml.models.engagement import EngagementModel
from engagement_dagster.core.ml.models.ltv import LtvModel
from engagement_dagster.core.ml.models.segment import SegmentModel

MODEL_KINDS: dict[str, type[ModelKind]] = {
    kind.name: kind for kind in (EngagementModel, ChurnModel, LtvModel, ContentRecommender, SegmentModel, AnomalyModel)
}


class NaiveBaseline:
    """What serves a model's predictions while it has no champion (a first week whose challenger
    failed the gate): the naive model the gate compares with, learnt from the week's train split."""

    version = "baseline"

    def __init__(self, name: str, params: dict):
        self.name, self.params = name, params

    @classmethod
    def fit(cls, name: str, train: pd.DataFrame) -> NaiveBaseline:
        return cls(name, MODEL_KINDS[name].naive_params(train))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return MODEL_KINDS[self.name].naive_predict(self.params, frame)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "params": self.params}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> NaiveBaseline:
        data = json.loads(text)
        return cls(data["name"], data["params"])


def new_model(name: str, train: pd.DataFrame, roles: FeatureRoles) -> ModelKind:
    kind = MODEL_KINDS[name]
    if kind is SegmentModel:
        return SegmentModel(SegmentModel.spec_for(roles))
    if kind is AnomalyModel:
        return AnomalyModel(FeatureSpec(list(roles.features)))
    return kind(FeatureSpec.from_training(train, roles))


def splits(frame: pd.DataFrame, roles: FeatureRoles) -> dict[str, pd.DataFrame]:
    return {name: part.reset_index(drop=True) for name, part in frame.groupby(roles.split)}
