"""Column roles of the model-ready dbt model, read from the dbt manifest (DESIGN.md §5).

An analyst adds a feature with SQL + YAML (`meta: {role: feature}`); training picks it up here
with no Python change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROLES = ("id", "week", "protected", "feature", "categorical", "target", "split")
MODEL_INPUT = "customer_model_input"


@dataclass(frozen=True)
class FeatureRoles:
    id: str
    features: tuple[str, ...]
    categoricals: tuple[str, ...]
    targets: tuple[str, ...]
    protected: tuple[str, ...]
    split: str

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
    )
