"""What every model shares: the feature spec it was trained on, the interface the registry,
the gate and scoring use, the XGBoost fit/predict/serialize core, and how scikit-learn parts are stored."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import joblib
import numpy as np
import pandas as pd

from engagement_dagster.core.ml.feature_roles import FeatureRoles

if TYPE_CHECKING:
    import xgboost as xgb

MAX_BIN = 64  # the same for every QuantileDMatrix of one booster
SEED = 7
EARLY_STOPPING_ROUNDS = 10  # valid loss flat for 10 rounds: stop (then keep the best iteration)


@dataclass
class FeatureSpec:
    """What a model was trained on: input columns and the category levels of each categorical."""

    numeric: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_training(cls, frame: pd.DataFrame, roles: FeatureRoles) -> FeatureSpec:
        levels = {c: sorted(frame[c].dropna().astype(str).unique()) for c in roles.categoricals}
        return cls(list(roles.features), levels)

    @property
    def columns(self) -> list[str]:
        return self.numeric + list(self.categories)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Model inputs in a fixed order; unseen category levels become missing values."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise KeyError(f"input frame lacks model columns {missing}")
        out = frame[self.numeric].astype("float32")
        for column, levels in self.categories.items():
            out[column] = pd.Categorical(frame[column].astype(str), categories=levels)
        return out

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """`matrix` as one float32 array, a category as its code (NaN when missing or unseen), as
        XGBoost reads a numpy input."""
        out = self.matrix(frame)
        x = np.empty((len(out), len(self.columns)), dtype="float32")
        for i, column in enumerate(self.columns):
            if column in self.categories:
                codes = out[column].cat.codes.to_numpy()
                x[:, i] = np.where(codes < 0, np.nan, codes)
            else:
                x[:, i] = out[column].to_numpy("float32")
        return x

    def to_json(self) -> str:
        return json.dumps({"numeric": self.numeric, "categories": self.categories}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        data = json.loads(text)
        return cls(data["numeric"], data["categories"])


def booster_bytes(booster: xgb.Booster) -> bytes:
    return bytes(booster.save_raw("ubj"))


def booster_from(data: bytes) -> xgb.Booster:
    import xgboost as xgb  # imported when used, like scikit-learn (core/ml/metrics.py says why)

    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    return booster


class ModelKind:
    """Base of the six models."""

    name: ClassVar[str]
    target: ClassVar[str | None] = None
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    description: ClassVar[str]

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self.info: dict = {}  # fit details for the model card (rounds, chosen k, …)
        self.fit_threads = 0  # 0: all cores; set lower when several models train side by side

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> ModelKind:
        raise NotImplementedError

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        raise NotImplementedError

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        """The same metrics for the naive model (NaiveBaseline), for the promotion gate."""
        raise NotImplementedError

    @classmethod
    def naive_params(cls, train: pd.DataFrame) -> dict:
        """What the naive model learns from `train` (a mean, a median, a popularity order)."""
        return {}

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        """The naive model's predictions, in the same columns as ``predict``."""
        raise NotImplementedError

    def to_files(self) -> dict[str, bytes]:
        raise NotImplementedError

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ModelKind:
        raise NotImplementedError


class XGBoostModel(ModelKind):
    params: ClassVar[dict] = {}  # objective, learning rate, depth: per model
    # Regularisation every booster here shares: leaves of at least 20 rows, row and column sampling.
    shared_params: ClassVar[dict] = {"min_child_weight": 20, "subsample": 0.8, "colsample_bytree": 0.8}
    max_rounds: ClassVar[int] = 400

    def __init__(self, spec: FeatureSpec, booster: xgb.Booster | None = None):
        super().__init__(spec)
        self.booster = booster

    def _label(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.target].to_numpy(dtype="float32")

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> XGBoostModel:
        import xgboost as xgb

        dtrain = xgb.QuantileDMatrix(self.spec.matrix(train), self._label(train), enable_categorical=True,
                                     max_bin=MAX_BIN)
        dvalid = xgb.QuantileDMatrix(self.spec.matrix(valid), self._label(valid), enable_categorical=True,
                                     max_bin=MAX_BIN, ref=dtrain)
        params = {"tree_method": "hist", "max_bin": MAX_BIN, "seed": SEED, "nthread": self.fit_threads,
                  **self.shared_params, **self.params}
        self.booster = xgb.train(params, dtrain, self.max_rounds, evals=[(dvalid, "valid")],
                                 early_stopping_rounds=EARLY_STOPPING_ROUNDS, verbose_eval=False)
        # Keep only the trees up to the best iteration, so every later use sees the chosen model.
        self.booster = self.booster[: self.booster.best_iteration + 1]
        self.booster.set_param({"nthread": 0})  # predictions and SHAP use every core again
        self.info["boosting_rounds"] = self.booster.num_boosted_rounds()
        return self

    def margin(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.inplace_predict(self.spec.matrix(frame), predict_type="margin")

    def raw_predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.booster.inplace_predict(self.spec.matrix(frame))

    def contributions(self, frame: pd.DataFrame, approximate: bool) -> np.ndarray:
        """Per-feature contributions to the margin, last column the bias. Exact TreeSHAP, or
        Saabas (approximate=True), which is ~100× cheaper for whole weekly batches. Exact values of a
        single-output booster come from lookup tables (`fast_trees.TreeShap`, ~6× faster than XGBoost's
        pred_contribs on the at-risk rows of a week, equal to float32 rounding); XGBoost computes them
        when the trees are too deep for the tables."""
        import xgboost as xgb

        if not approximate and len(frame):
            shap = self._tree_shap()
            if shap is not None:
                values = shap.contributions(self.spec.codes(frame))
                return np.column_stack([values, np.full(len(values), self._shap_bias)])
        dmatrix = xgb.DMatrix(self.spec.matrix(frame), enable_categorical=True)
        return self.booster.predict(dmatrix, pred_contribs=True, approx_contribs=approximate)

    def _tree_shap(self):
        if not hasattr(self, "_shap"):
            import xgboost as xgb

            from engagement_dagster.core.ml.fast_trees import TreeShap, TreeShapTooLarge

            self._shap = None
            config = json.loads(self.booster.save_config())
            if int(config["learner"]["learner_model_param"].get("num_class", "0")) <= 1:
                try:
                    self._shap = TreeShap(self.booster, np.arange(len(self.spec.columns)), len(self.spec.columns))
                except TreeShapTooLarge:
                    pass
                else:  # the bias column is the same for every row: the expected margin
                    empty = pd.DataFrame({c: [np.nan] for c in self.spec.numeric}
                                         | {c: [None] for c in self.spec.categories})
                    self._shap_bias = float(self.booster.predict(
                        xgb.DMatrix(self.spec.matrix(empty), enable_categorical=True), pred_contribs=True)[0, -1])
        return self._shap

    def global_importance(self, frame: pd.DataFrame, rows: int = 1000) -> dict[str, float]:
        """Mean |exact SHAP| per feature on a sample, largest first."""
        return {f: s["mean_abs"] for f, s in self.shap_summary(frame, rows).items()}

    def shap_summary(self, frame: pd.DataFrame, rows: int = 1000) -> dict[str, dict]:
        """Per feature, largest mean |exact SHAP| first, on a sample: the mean |contribution|, and, for a
        single-output model, which way it pushes the prediction: the share of rows it raises and the
        mean contribution when it raises / lowers it, and the rank correlation between the feature's
        value and its contribution (None for a categorical feature or one that does not vary)."""
        sample = frame.sample(min(rows, len(frame)), random_state=SEED)
        contrib = self.contributions(sample, approximate=False)
        if contrib.ndim == 3:  # multiclass: (rows, classes, features + 1); a direction means nothing here
            mean = np.abs(contrib).sum(axis=1)[:, :-1].mean(axis=0)
            return {self.spec.columns[i]: {"mean_abs": float(mean[i])} for i in np.argsort(-mean)}
        contrib = contrib[:, :-1]
        mean = np.abs(contrib).mean(axis=0)
        out = {}
        for i in np.argsort(-mean):
            column, values = self.spec.columns[i], contrib[:, i]
            raising, lowering = values[values > 0], values[values < 0]
            correlation = None
            if column in self.spec.numeric:
                feature = sample[column].astype("float64")
                both = pd.DataFrame({"x": feature.to_numpy(), "c": values}).dropna()
                if both["x"].nunique() > 1 and both["c"].nunique() > 1:
                    correlation = float(both["x"].corr(both["c"], method="spearman"))
            out[column] = {"mean_abs": float(mean[i]), "share_raising": float(len(raising) / len(values)),
                           "mean_when_raising": float(raising.mean()) if len(raising) else 0.0,
                           "mean_when_lowering": float(lowering.mean()) if len(lowering) else 0.0,
                           "value_correlation": correlation}
        return out

    def to_files(self) -> dict[str, bytes]:
        return {"model.ubj": booster_bytes(self.booster), "features.json": self.spec.to_json().encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> XGBoostModel:
        return cls(FeatureSpec.from_json(files["features.json"].decode()), booster_from(files["model.ubj"]))


def sklearn_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def sklearn_from(data: bytes):
    return joblib.load(io.BytesIO(data))
