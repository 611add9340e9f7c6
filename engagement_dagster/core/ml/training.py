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


# Train rows read at most (valid rows in proportion, 15/70), and test rows at most: measured by the
# learning curve in docs/benchmarks.md, where the test metrics stop improving.
MAX_TRAINING_ROWS = 1_000_000
MAX_TEST_ROWS = 1_000_000


def sample_sql(table: str, roles: FeatureRoles, max_training_rows: int = MAX_TRAINING_ROWS,
               max_test_rows: int = MAX_TEST_ROWS) -> str:
    """The model-ready rows training reads: per split, the customers with the smallest `customer_hash`
    first, up to the caps. A customer's hash never changes, so a sampled customer stays sampled as long
    as about as many customers rank before them: the sample is stable across weeks. Plain SQL for
    DuckDB and Athena alike; the rank column (`sample_rank`) comes back with the rows."""
    valid = -(-max_training_rows * 15 // 70)
    # Ranked on three columns, then joined back: the engine sorts ids and hashes, not whole rows.
    return (f"select t.*, r.sample_rank from {table} as t join (select {roles.id} as sample_id, {roles.split} as "
            f"sample_split, row_number() over (partition by {roles.split} order by {roles.key}, {roles.id}) as "
            f"sample_rank from {table}) as r on t.{roles.id} = r.sample_id where r.sample_rank <= case "
            f"r.sample_split when 'train' then {int(max_training_rows)} when 'valid' then {int(valid)} "
            f"else {int(max_test_rows)} end")


def splits(frame: pd.DataFrame, roles: FeatureRoles) -> dict[str, pd.DataFrame]:
    return {name: part.reset_index(drop=True) for name, part in frame.groupby(roles.split)}
