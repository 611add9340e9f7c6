"""Customer segments: k-means on standardized behavioural features, each named from its centroid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from engagement_dagster.core.ml.feature_roles import FeatureRoles
from engagement_dagster.core.ml.models.base import SEED, FeatureSpec, ModelKind, sklearn_bytes, sklearn_from

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
        # Imported when used (core/ml/metrics.py says why).
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score
        from sklearn.preprocessing import StandardScaler

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
        from sklearn.metrics import silhouette_score

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
        return {"model.joblib": sklearn_bytes({"scaler": self.scaler, "kmeans": self.kmeans}),
                "segments.json": json.dumps(self.profiles, indent=2).encode(),
                "features.json": self.spec.to_json().encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> SegmentModel:
        parts = sklearn_from(files["model.joblib"])
        profiles = json.loads(files["segments.json"])
        return cls(FeatureSpec.from_json(files["features.json"].decode()), parts["scaler"], parts["kmeans"],
                   [p["name"] for p in profiles], profiles)
