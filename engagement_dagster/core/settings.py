"""The one environment switch: ENGAGEMENT_ENV=local (default) or aws, plus where things live."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


# What AWS mode cannot guess: bucket and database names are the account's own (a default bucket
# name would be a global name someone else may own).
AWS_SETTINGS = {
    "ENGAGEMENT_LAKE_BUCKET": "S3 bucket of the lake",
    "ENGAGEMENT_GLUE_RAW_DATABASE": "Glue database of the lake's tables (raw_customers, customer_predictions)",
    "ENGAGEMENT_GLUE_DATABASE": "Glue database dbt builds its tables in",
    "ENGAGEMENT_ATHENA_WORKGROUP": "Athena workgroup",
    "ENGAGEMENT_ATHENA_STAGING": "s3:// prefix for Athena query results",
    "ENGAGEMENT_ATHENA_DATA": "s3:// prefix where dbt writes its Athena tables",
}


class MissingSettings(ValueError):
    pass


def aws_settings() -> dict[str, str]:
    """AWS mode's settings from the environment; refuses to start without any of them, naming each."""
    missing = [f"{name} ({what})" for name, what in AWS_SETTINGS.items() if not os.environ.get(name, "").strip()]
    if missing:
        raise MissingSettings("ENGAGEMENT_ENV=aws needs these environment variables: " + "; ".join(missing))
    return {name: os.environ[name].strip() for name in AWS_SETTINGS} | {
        "ENGAGEMENT_LAKE_PREFIX": os.environ.get("ENGAGEMENT_LAKE_PREFIX", "").strip("/")}


def where_things_are() -> dict[str, str]:
    """Where a run's outputs live, for the run summary: paths locally, S3 URIs and Glue/Athena on AWS."""
    if environment() == "aws":
        aws = aws_settings()
        lake = f"s3://{aws['ENGAGEMENT_LAKE_BUCKET']}/" + (f"{aws['ENGAGEMENT_LAKE_PREFIX']}/" if
                                                           aws["ENGAGEMENT_LAKE_PREFIX"] else "")
        return {
            "lake": lake,
            "warehouse": (f"Athena workgroup {aws['ENGAGEMENT_ATHENA_WORKGROUP']}, Glue databases "
                          f"{aws['ENGAGEMENT_GLUE_DATABASE']} (dbt: predictions_final, at_risk_customers, …) and "
                          f"{aws['ENGAGEMENT_GLUE_RAW_DATABASE']} (raw_customers, customer_predictions)"),
            "registry": f"{lake}models/  (champion.json, card.md per model)",
        }
    return {
        "lake": str(lake_dir()),
        "warehouse": f"{warehouse_path()}  (DuckDB: predictions_final, at_risk_customers, churn_by_segment, …)",
        "registry": f"{lake_dir() / 'models'}  (champion.json, card.md per model)",
    }
