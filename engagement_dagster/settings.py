"""The one environment switch: ENGAGEMENT_ENV=local (default) or aws, plus where things live."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = ("local", "aws")


def environment() -> str:
    env = os.environ.get("ENGAGEMENT_ENV", "local").strip().lower()
    if env not in ENVIRONMENTS:
        raise ValueError(f"ENGAGEMENT_ENV must be one of {ENVIRONMENTS}, got {env!r}")
    return env


def lake_dir() -> Path:
    """Root of the local lake (a plain directory); ENGAGEMENT_LAKE_DIR overrides ./.lake."""
    return Path(os.environ.get("ENGAGEMENT_LAKE_DIR", PROJECT_ROOT / ".lake")).resolve()


def warehouse_path() -> Path:
    """The local DuckDB warehouse file, inside the lake so one directory holds a whole run."""
    return lake_dir() / "warehouse.duckdb"


def dbt_target() -> str:
    """dbt profile target of the environment. The manifest must be parsed with the same target
    (and lake env var) the runs use, or dbt discards partial parsing on every run."""
    return "prod" if environment() == "aws" else "local"
