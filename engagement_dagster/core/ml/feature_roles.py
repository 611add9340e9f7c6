"""Column roles of the model-ready dbt model (`meta.role` in its YAML), read from the dbt manifest.

An analyst adds a feature with SQL + YAML (`meta: {role: feature}`); training picks it up here
with no Python change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROLES = ("id", "week", "protected", "feature", "categorical", "target", "split", "key")
MODEL_INPUT = "customer_model_input"


@dataclass(frozen=True)
class FeatureRoles:
    id: str
    features: tuple[str, ...]
    categoricals: tuple[str, ...]
    targets: tuple[str, ...]
    protected: tuple[str, ...]
    split: str
    key: str | None = None  # the customer's hash: capped samples and scoring shards (not a model input)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.features + self.categoricals


def read_roles(manifest_path: Path, model: str = MODEL_INPUT) -> FeatureRoles:
    nodes = json.loads(Path(manifest_path).read_text())["nodes"]
    node = next((n for n in nodes.values() if n["resource_type"] == "model" and n["name"] == model), None)
    if node is None:
        raise KeyError(f"{manifest_path}: no dbt model named {model!r}")
    by_role: dict[str, list[str]] = {role: [] for role in ROLES}
    for name, column in node["columns"].items():
        role = (column.get("meta") or {}).get("role") or (column.get("config", {}).get("meta") or {}).get("role")
        if role not in ROLES:
            raise ValueError(f"{manifest_path}: {model}.{name} has role {role!r}; expected one of {ROLES}")
        by_role[role].append(name)
    if len(by_role["id"]) != 1 or len(by_role["split"]) != 1:
        raise ValueError(f"{model} must declare exactly one 'id' and one 'split' column")
    return FeatureRoles(
        id=by_role["id"][0], features=tuple(by_role["feature"]), categoricals=tuple(by_role["categorical"]),
        targets=tuple(by_role["target"]), protected=tuple(by_role["protected"]), split=by_role["split"][0],
        key=by_role["key"][0] if by_role["key"] else None,
    )


RANGE_TEST = "columns_within_meta_range"


def range_test_failure_relations(manifest_path: Path) -> dict[str, str]:
    """`columns_within_meta_range` test name → the relation its failing rows are stored in."""
    nodes = json.loads(Path(manifest_path).read_text())["nodes"]
    return {n["name"]: n["relation_name"] for n in nodes.values()
            if n["resource_type"] == "test" and (n.get("test_metadata") or {}).get("name") == RANGE_TEST
            and n["config"].get("store_failures") and n.get("relation_name")}


def _bound(value) -> str:
    return "…" if value is None or pd.isna(value) else f"{value:g}"  # open bound, or null read back as NaN


def range_failure_summary(failures: list[dict]) -> str:
    """The rows of a failed `columns_within_meta_range` test in words: which column, how many
    rows, and how far outside its documented range they go."""
    parts = []
    for row in failures:
        text = f"{row['column_name']}: {int(row['rows_outside_range']):,} row(s)"
        nulls = int(row.get("null_rows") or 0)
        if nulls:
            text += f" ({nulls:,} null)"
        low, high = row.get("range_min"), row.get("range_max")
        if int(row["rows_outside_range"]) > nulls:
            text += (f" outside [{_bound(low)}, {_bound(high)}]: observed "
                     f"{_bound(row.get('observed_min'))} … {_bound(row.get('observed_max'))}")
        parts.append(text)
    return "; ".join(parts)
