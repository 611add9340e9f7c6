"""The six models: fit on `train`, early-stop and calibrate on `valid`, report on `test`.

Knows nothing of Dagster or of where data lives. Every model has the same small interface:
``fit(train, valid)``, ``predict(frame)``, ``evaluate(test)`` (test metrics plus naive baselines),
``to_files()`` / ``from_files()`` for the registry. Supervised models are XGBoost (hist, native
categoricals); segments are k-means, anomalies an isolation forest (scikit-learn).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import ClassVar

import joblib
import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from engagement_dagster import metrics
from engagement_dagster.feature_roles import FeatureRoles

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

    def to_json(self) -> str:
        return json.dumps({"numeric": self.numeric, "categories": self.categories}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        data = json.loads(text)
        return cls(data["numeric"], data["categories"])


def _booster_bytes(booster: xgb.Booster) -> bytes:
    return bytes(booster.save_raw("ubj"))


def _booster_from(data: bytes) -> xgb.Booster:
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


class _XGBoostModel(ModelKind):
    params: ClassVar[dict] = {}  # objective, learning rate, depth: per model
    # Regularisation every booster here shares: leaves of at least 20 rows, row and column sampling.
    shared_params: ClassVar[dict] = {"min_child_weight": 20, "subsample": 0.8, "colsample_bytree": 0.8}
    max_rounds: ClassVar[int] = 400

    def __init__(self, spec: FeatureSpec, booster: xgb.Booster | None = None):
        super().__init__(spec)
        self.booster = booster

    def _label(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.target].to_numpy(dtype="float32")

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> _XGBoostModel:
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
        Saabas (approximate=True), which is ~100× cheaper for whole weekly batches."""
        dmatrix = xgb.DMatrix(self.spec.matrix(frame), enable_categorical=True)
        return self.booster.predict(dmatrix, pred_contribs=True, approx_contribs=approximate)

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
        return {"model.ubj": _booster_bytes(self.booster), "features.json": self.spec.to_json().encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> _XGBoostModel:
        return cls(FeatureSpec.from_json(files["features.json"].decode()), _booster_from(files["model.ubj"]))


class EngagementModel(_XGBoostModel):
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


class LtvModel(_XGBoostModel):
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


class ChurnModel(_XGBoostModel):
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
        return cls(FeatureSpec.from_json(files["features.json"].decode()), _booster_from(files["model.ubj"]),
                   json.loads(files["calibration.json"]))


class ContentRecommender(_XGBoostModel):
    name = "content_recommender"
    target = "content_category_primary"
    primary_metric, higher_is_better = "top3_accuracy", True
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
        return cls(FeatureSpec.from_json(files["features.json"].decode()), _booster_from(files["model.ubj"]),
                   json.loads(files["classes.json"]))


# Behavioural dimensions a segment is described by, with the name a high value earns …
SEGMENT_DIMENSIONS = {
    "log_weekly_minutes": "Heavy users",
    "log_total_connections": "Connectors",
    "log_followers": "Influencers",
    "posts_last_30_days": "Creators",
    "swipes_right_last_30_days": "Daters",
    "gig_applications_sent": "Gig seekers",
    "log_revenue_90d": "Spenders",
    "premium_features_used_count": "Premium explorers",
}
# … and the activity it measures, for a low value ("Low spending") or a qualifier ("high posting").
SEGMENT_ASPECTS = {
    "log_weekly_minutes": "usage",
    "log_total_connections": "connections",
    "log_followers": "followers",
    "posts_last_30_days": "posting",
    "swipes_right_last_30_days": "dating",
    "gig_applications_sent": "gig seeking",
    "log_revenue_90d": "spending",
    "premium_features_used_count": "premium use",
}
SEGMENT_MARKED_SD = 0.5  # a centroid coordinate a name may mention: at least this far from the mean
SEGMENT_DORMANT_DIMENSIONS = 6  # low on at least this many dimensions (and high on none): "Dormant"
SEGMENT_NAMING_RULE = (
    f"Each segment is named from its centroid, in standard deviations (sd) from the training mean; a "
    f"dimension counts when it is at least {SEGMENT_MARKED_SD} sd from the mean. If some dimensions are that "
    f"far above the mean, the name is the highest one's (\"Spenders\"), with the second highest's after "
    f"\"&\" (\"Daters & creators\"). If none is above but some are below, the name is \"Low\" and the "
    f"lowest one's activity, with the second lowest's after \"&\" (\"Low spending & gig seeking\"), or "
    f"\"Dormant\" when at least {SEGMENT_DORMANT_DIMENSIONS} of the {len(SEGMENT_DIMENSIONS)} dimensions are "
    f"below. If none is {SEGMENT_MARKED_SD} sd away either way: \"Average users\". Two segments with the same "
    f"name each get, in brackets, the furthest-from-the-mean dimension their name does not mention yet "
    f"(\"Spenders (low posting)\"); identical centroids are numbered. So every word of a name is a dimension "
    f"of its centroid, on the side the name says, and the strongest such dimensions are the ones named.")


def segment_name(profile: dict[str, float]) -> tuple[str, list[dict]]:
    """A segment's name from its centroid (dimension → z), by SEGMENT_NAMING_RULE, and the dimensions
    it is named after (dimension, z, "high" or "low"), strongest first."""
    high = sorted((d for d, z in profile.items() if z >= SEGMENT_MARKED_SD), key=lambda d: (-profile[d], d))
    low = sorted((d for d, z in profile.items() if z <= -SEGMENT_MARKED_SD), key=lambda d: (profile[d], d))
    if high:
        named = high[:2]
        name = " & ".join([SEGMENT_DIMENSIONS[named[0]]] + [SEGMENT_DIMENSIONS[d].lower() for d in named[1:]])
    elif len(low) >= SEGMENT_DORMANT_DIMENSIONS:
        named, name = low, "Dormant"
    elif low:
        named = low[:2]
        name = "Low " + " & ".join(SEGMENT_ASPECTS[d] for d in named)
    else:
        named, name = [], "Average users"
    return name, [{"dimension": d, "z": round(float(profile[d]), 2), "side": "high" if profile[d] > 0 else "low"}
                  for d in named]


def _qualifier(profile: dict[str, float], named: list[dict]) -> dict | None:
    """The furthest-from-the-mean marked dimension a name does not mention yet."""
    used = {n["dimension"] for n in named}
    rest = sorted((d for d, z in profile.items() if d not in used and abs(z) >= SEGMENT_MARKED_SD),
                  key=lambda d: (-abs(profile[d]), d))
    if not rest:
        return None
    d = rest[0]
    return {"dimension": d, "z": round(float(profile[d]), 2), "side": "high" if profile[d] > 0 else "low"}


def segment_names(profiles: list[dict[str, float]]) -> list[tuple[str, list[dict]]]:
    """Every segment's name and the dimensions it is named after; names are unique."""
    named = [segment_name(p) for p in profiles]
    for _ in range(len(SEGMENT_DIMENSIONS)):  # each pass qualifies the names that still collide
        names = [n for n, _ in named]
        clashes = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clashes:
            break
        for i in clashes:
            name, after = named[i]
            extra = _qualifier(profiles[i], after)
            if extra is None:
                continue
            words = f"{extra['side']} {SEGMENT_ASPECTS[extra['dimension']]}"
            name = f"{name[:-1]}, {words})" if name.endswith(")") else f"{name} ({words})"
            named[i] = (name, [*after, extra])
    names = [n for n, _ in named]
    for i, (name, after) in enumerate(named):  # identical centroids (nothing left to tell them apart)
        if names.count(name) > 1:
            named[i] = (f"{name} #{names[: i + 1].count(name)}", after)
    return named


def _sklearn_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def _sklearn_from(data: bytes):
    return joblib.load(io.BytesIO(data))


class SegmentModel(ModelKind):
    name = "segment_model"
    primary_metric, higher_is_better = "silhouette", True
    description = ("k-means on standardized behavioural features; k in 3..8 chosen by the highest "
                   "silhouette score on a sample of the train split; each segment named from its centroid.")
    k_range = range(3, 9)

    def __init__(self, spec: FeatureSpec, scaler=None, kmeans=None, names: list[str] | None = None,
                 profiles: list[dict] | None = None):
        super().__init__(spec)
        self.scaler, self.kmeans, self.names, self.profiles = scaler, kmeans, names, profiles

    @classmethod
    def spec_for(cls, roles: FeatureRoles) -> FeatureSpec:
        missing = [c for c in SEGMENT_DIMENSIONS if c not in roles.features]
        if missing:
            raise KeyError(f"segment features missing from the model-ready table: {missing}")
        return FeatureSpec(list(SEGMENT_DIMENSIONS))

    def _scaled(self, frame: pd.DataFrame) -> np.ndarray:
        return self.scaler.transform(self.spec.matrix(frame).fillna(0).to_numpy())

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame) -> SegmentModel:
        sample = train.sample(min(len(train), 10_000), random_state=SEED)
        self.scaler = StandardScaler().fit(self.spec.matrix(sample).fillna(0).to_numpy())
        x = self._scaled(sample)
        probe = x[:2000]  # silhouette costs O(rows²): 2,000 rows tell the k apart
        scores = {}
        for k in self.k_range:
            labels = KMeans(k, n_init=2, random_state=SEED).fit_predict(x)
            scores[k] = float(silhouette_score(probe, labels[:2000]))
        best_k = max(scores, key=scores.get)
        self.kmeans = KMeans(best_k, n_init=4, random_state=SEED).fit(x)
        self.info.update({"k": best_k, "silhouette_by_k": scores})
        self.names, self.profiles = self._describe(self.kmeans.cluster_centers_,
                                                   np.bincount(self.kmeans.labels_, minlength=best_k))
        return self

    @staticmethod
    def _describe(centers: np.ndarray, sizes: np.ndarray) -> tuple[list[str], list[dict]]:
        """Names (SEGMENT_NAMING_RULE) and profiles: share of the training sample, centroid (z), and the
        dimensions each name stands for."""
        dims = list(SEGMENT_DIMENSIONS)
        z = [{d: round(float(v), 2) for d, v in zip(dims, center, strict=True)} for center in centers]
        named = segment_names(z)
        total = sizes.sum()
        profiles = [{"name": name, "share": float(size / total), "profile_z": profile, "named_after": after}
                    for (name, after), size, profile in zip(named, sizes, z, strict=True)]
        return [p["name"] for p in profiles], profiles

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        labels = self.kmeans.predict(self._scaled(frame))
        return pd.DataFrame({"segment_id": labels.astype("int32"), "segment": np.array(self.names)[labels]},
                            index=frame.index)

    def evaluate(self, test: pd.DataFrame) -> dict[str, float]:
        sample = test.sample(min(len(test), 4000), random_state=SEED)
        x = self._scaled(sample)
        labels = self.kmeans.predict(x)
        score = float(silhouette_score(x, labels)) if len(set(labels)) > 1 else 0.0
        return {"silhouette": score, "k": float(self.kmeans.n_clusters)}

    def baseline(self, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
        # A clustering that means nothing: random labels score about 0 (or below).
        return {"silhouette": 0.0, "k": float(self.kmeans.n_clusters)}

    @classmethod
    def naive_predict(cls, params: dict, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"segment_id": np.zeros(len(frame), dtype="int32"), "segment": "All customers"},
                            index=frame.index)

    def to_files(self) -> dict[str, bytes]:
        return {"model.joblib": _sklearn_bytes({"scaler": self.scaler, "kmeans": self.kmeans}),
                "segments.json": json.dumps(self.profiles, indent=2).encode(),
                "features.json": self.spec.to_json().encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> SegmentModel:
        parts = _sklearn_from(files["model.joblib"])
        profiles = json.loads(files["segments.json"])
        return cls(FeatureSpec.from_json(files["features.json"].decode()), parts["scaler"], parts["kmeans"],
                   [p["name"] for p in profiles], profiles)


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
        return {"model.joblib": _sklearn_bytes({"forest": self.forest, "medians": self.medians}),
                "features.json": self.spec.to_json().encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> AnomalyModel:
        parts = _sklearn_from(files["model.joblib"])
        return cls(FeatureSpec.from_json(files["features.json"].decode()), parts["forest"], parts["medians"])


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
