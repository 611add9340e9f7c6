"""The dbt project as Dagster sees it. Kept alone in this module so that
`dagster-dbt project prepare-and-package --file engagement_dagster/dbt_project.py` can build the
manifest without importing the rest of the code location."""

import os
from pathlib import Path

from dagster_dbt import DbtProject

from engagement_dagster.settings import dbt_target

engagement_dbt = DbtProject(
    project_dir=Path(__file__).resolve().parent.parent / "dbt_project",
    profiles_dir=Path(__file__).resolve().parent.parent / "dbt_project",
    target=dbt_target(),
    # A separate target dir keeps a second lake (the benchmark's) from spoiling partial parsing here.
    target_path=Path(os.environ.get("DBT_TARGET_PATH", "target")),
)
engagement_dbt.prepare_if_dev()
