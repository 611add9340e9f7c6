"""The dbt project as Dagster sees it. Kept alone in this module so that
`dagster-dbt project prepare-and-package --file engagement_dagster/defs/dbt/project.py` can build the
manifest without importing the rest of the code location."""

import os
import shutil
import sys
from pathlib import Path

from dagster_dbt import DbtProject

from engagement_dagster.core.settings import dbt_target

engagement_dbt = DbtProject(
    project_dir=Path(__file__).resolve().parents[3] / "dbt_project",
    profiles_dir=Path(__file__).resolve().parents[3] / "dbt_project",
    target=dbt_target(),
    # A separate target dir keeps a second lake (the benchmark's) from spoiling partial parsing here.
    target_path=Path(os.environ.get("DBT_TARGET_PATH", "target")),
)
# `dg check defs` / `dagster dev` from a shell where the virtual environment is not activated: the
# manifest is prepared with the dbt installed beside this interpreter (dagster-dbt looks on PATH).
if shutil.which("dbt") is None and (Path(sys.executable).parent / "dbt").exists():
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
engagement_dbt.prepare_if_dev()
