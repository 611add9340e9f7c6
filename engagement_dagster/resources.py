"""Resources chosen by the one environment switch (settings.environment())."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource

from engagement_dagster.dbt_project import engagement_dbt
from engagement_dagster.lake import LocalLake, S3Lake
from engagement_dagster.settings import environment, lake_dir


def build_resources(env: str | None = None) -> dict:
    env = env or environment()
    if env == "aws":
        lake = S3Lake(
            bucket=os.environ.get("ENGAGEMENT_LAKE_BUCKET", "engagement-lake"),
            prefix=os.environ.get("ENGAGEMENT_LAKE_PREFIX", ""),
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None,
        )
        dbt_target = "prod"
    else:
        # dbt runs in its own directory: hand it the lake as an absolute path.
        os.environ["ENGAGEMENT_LAKE_DIR"] = str(lake_dir())
        lake = LocalLake(root=str(lake_dir()))
        dbt_target = "local"
    # The dbt beside this interpreter, so an unactivated virtual environment still works.
    dbt_executable = shutil.which("dbt") or str(Path(sys.executable).parent / "dbt")
    return {"lake": lake, "dbt": DbtCliResource(project_dir=engagement_dbt, target=dbt_target,
                                                dbt_executable=dbt_executable)}
