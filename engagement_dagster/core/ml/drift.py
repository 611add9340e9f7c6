"""Feature drift between two weeks: the population stability index (PSI) per model input.

PSI = Σ (actual − expected) · ln(actual / expected) over bins, where `expected` are the previous
week's shares and `actual` this week's, in the same bins:

- numeric features: the previous week's deciles, observed values (equal edges collapse, so a 0/1
  flag gets its two values as bins, not ten); missing values are a bin of their own, so a jump
  in nulls is drift too;
- categorical features: one bin per category seen in either week (missing as a category).

An empty bin would make the logarithm infinite: its share is taken as EPSILON instead.
Rule of thumb: < 0.1 stable, 0.1–0.2 moderate, > 0.2 a shift worth a look (DRIFT_THRESHOLD).

The previous week is kept as a `Reference` (bin edges and shares, no rows and no customer ids),
small enough to store as JSON beside the week, because the warehouse's model-ready table holds only
the week last built. Pure numpy/pandas; no Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

EPSILON = 1e-4
DRIFT_THRESHOLD = 0.2
# Customers compared, the smallest hashes first: the same customers each week (less noise than two
# random samples), and deciles of 200,000 rows are exact to a few in ten thousand, whatever the week's size.
SAMPLE_ROWS = 200_000


def sample_sql(table: str, key: str = "customer_hash", customer_id: str = "customer_id",
               rows: int = SAMPLE_ROWS) -> str:
    """The rows the drift check compares (plain SQL for DuckDB and Athena)."""
    # Ranked on two columns, then joined back: the engine sorts ids and hashes, not whole rows.
    return (f"select t.*, r.sample_rank from {table} as t join (select {customer_id} as sample_id, row_number() "
            f"over (order by {key}, {customer_id}) as sample_rank from {table}) as r on t.{customer_id} = "
            f"r.sample_id where r.sample_rank <= {int(rows)}")
DECILES = np.arange(1, 10) / 10  # not linspace: 0.30000000000000004 would move an edge
MISSING = "<missing>"


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float:
    """PSI of two share vectors over the same bins (each sums to 1); empty bins count as `epsilon`."""
    e = np.maximum(np.asarray(expected, dtype="float64"), epsilon)
    a = np.maximum(np.asarray(actual, dtype="float64"), epsilon)
    if e.shape != a.shape:
        raise ValueError(f"expected and actual need the same bins: {e.shape} vs {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def decile_edges(values: pd.Series) -> list[float]:
    """Inner edges of the deciles of the non-missing values, ties merged (at most 9 edges)."""
    present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype="float64")
    if present.size == 0:
        return []
    # Observed values as edges (not interpolated between two): a count or a flag keeps its own values.
    return sorted({float(q) for q in np.quantile(present, DECILES, method="inverted_cdf")})


def binned_shares(values: pd.Series, edges: Sequence[float]) -> list[float]:
    """Shares of the values in the bins (−∞, e1], (e1, e2], …, (ek, ∞), then missing."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    total = len(numbers)
    if total == 0:
        return [0.0] * (len(edges) + 2)
    missing = np.isnan(numbers)
    bins = np.searchsorted(np.asarray(edges, dtype="float64"), numbers[~missing], side="left")
    counts = [*np.bincount(bins, minlength=len(edges) + 1).tolist(), int(missing.sum())]
    return [c / total for c in counts]


def category_shares(values: pd.Series) -> dict[str, float]:
    """Share of each category (missing values as MISSING)."""
    labels = values.astype("object").where(values.notna(), MISSING).astype(str)
    return {str(k): float(v) for k, v in labels.value_counts(normalize=True).sort_index().items()}


@dataclass(frozen=True)
class Reference:
    """One week's distribution of each input: decile edges and shares (numeric), category shares."""

    week: str
    rows: int
    numeric: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name → {edges, shares}
    categorical: dict[str, dict[str, float]] = field(default_factory=dict)  # name → {category: share}

    def to_json(self) -> bytes:
        return json.dumps({"week": self.week, "rows": self.rows, "numeric": self.numeric,
                           "categorical": self.categorical}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Reference:
        raw = json.loads(data)
        return cls(week=raw["week"], rows=int(raw["rows"]), numeric=raw.get("numeric", {}),
                   categorical=raw.get("categorical", {}))


def reference(frame: pd.DataFrame, week: str, numeric: Iterable[str], categorical: Iterable[str]) -> Reference:
    """The week's reference for the next week's comparison."""
    num = {}
    for name in numeric:
        edges = decile_edges(frame[name])
        num[name] = {"edges": edges, "shares": binned_shares(frame[name], edges)}
    return Reference(week=week, rows=len(frame), numeric=num,
                     categorical={name: category_shares(frame[name]) for name in categorical})


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature of one week against its reference, largest first."""

    week: str
    reference_week: str
    psi: dict[str, float]  # feature → PSI, descending
    threshold: float = DRIFT_THRESHOLD
    missing_features: tuple[str, ...] = ()  # in the reference, absent from the week (or the other way)

    @property
    def drifting(self) -> dict[str, float]:
        return {name: value for name, value in self.psi.items() if value > self.threshold}

    def top(self, n: int = 5) -> dict[str, float]:
        return dict(list(self.psi.items())[:n])

    @property
    def max_psi(self) -> float:
        return max(self.psi.values(), default=0.0)


def compare(previous: Reference, current: pd.DataFrame, week: str,
            threshold: float = DRIFT_THRESHOLD) -> DriftReport:
    """This week's PSI per feature in the bins of the previous week's reference."""
    values: dict[str, float] = {}
    missing = []
    for name, ref in previous.numeric.items():
        if name not in current.columns:
            missing.append(name)
            continue
        values[name] = psi(ref["shares"], binned_shares(current[name], ref["edges"]))
    for name, ref in previous.categorical.items():
        if name not in current.columns:
            missing.append(name)
            continue
        now = category_shares(current[name])
        categories = sorted(set(ref) | set(now))
        values[name] = psi([ref.get(c, 0.0) for c in categories], [now.get(c, 0.0) for c in categories])
    ordered = dict(sorted(values.items(), key=lambda item: (-item[1], item[0])))
    return DriftReport(week=week, reference_week=previous.week, psi=ordered, threshold=threshold,
                       missing_features=tuple(missing))


def population_stability(previous: pd.DataFrame, current: pd.DataFrame, numeric: Iterable[str],
                         categorical: Iterable[str], threshold: float = DRIFT_THRESHOLD) -> DriftReport:
    """PSI of two weeks' frames directly (the previous week's deciles as bins)."""
    return compare(reference(previous, "previous", numeric, categorical), current, "current", threshold)


def describe(report: DriftReport, n: int = 5) -> str:
    """One sentence for the check's description."""
    top = ", ".join(f"{name} {value:.3f}" for name, value in report.top(n).items())
    drifting = report.drifting
    if drifting:
        head = (f"{len(drifting)} of {len(report.psi)} feature(s) drifted (PSI > {report.threshold:g}) "
                f"since {report.reference_week}")
    else:
        head = (f"no feature drifted (PSI ≤ {report.threshold:g} for all {len(report.psi)}) since "
                f"{report.reference_week}; max {report.max_psi:.3f}")
    return f"{head}. Largest: {top}." if top else f"{head}."

