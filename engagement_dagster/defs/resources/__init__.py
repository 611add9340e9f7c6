"""Resources chosen by the one environment switch (settings.environment())."""

from __future__ import annotations

import os
import shutil
import sys
from functools import cached_property
from importlib.metadata import version
from pathlib import Path

from dagster_dbt import DbtCliResource
from packaging.version import Version

from engagement_dagster.core.settings import aws_settings, environment, lake_dir, warehouse_path
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.resources.catalog import GlueCatalog, LocalCatalog
from engagement_dagster.defs.resources.embeddings import KbEmbeddings
from engagement_dagster.defs.resources.lake import LocalLake, S3Lake
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import AthenaWarehouse, DuckDBWarehouse


class DbtCoreCliResource(DbtCliResource):
    """DbtCliResource for a dbt-core install (the only kind this project ships), minus two costs
    of every dbt step that buy this project nothing. dagster-dbt asks `dbt --version` in a
    subprocess to tell dbt-core from dbt Fusion (~3 s on 2 cores): the installed package says it."""

    @cached_property
    def _cli_version(self) -> Version:
        return Version(version("dbt-core"))

    def _initialize_dbt_core_adapter(self, args):
        # An in-process dbt adapter (~1.6 s per step) serves only fetch_row_counts() and
        # fetch_column_metadata(), which this project does not call: with DuckDB, that in-process
        # connection would also hold the file the next dbt subprocess must open.
        return None


def build_resources(env: str | None = None) -> dict:
    env = env or environment()
    if env == "aws":
        aws = aws_settings()  # refuses to start without them, naming each missing one
        lake = S3Lake(
            bucket=aws["ENGAGEMENT_LAKE_BUCKET"],
            prefix=aws["ENGAGEMENT_LAKE_PREFIX"],
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None,
        )
        # The Glue database the dbt source `lake` reads (dbt_project/models/sources.yml).
        catalog = GlueCatalog(database=aws["ENGAGEMENT_GLUE_RAW_DATABASE"])
        warehouse = AthenaWarehouse(
            database=aws["ENGAGEMENT_GLUE_DATABASE"],
            workgroup=aws["ENGAGEMENT_ATHENA_WORKGROUP"],
            output_location=aws["ENGAGEMENT_ATHENA_STAGING"],
        )
    else:
        # dbt runs in its own directory: hand it the lake as an absolute path.
        os.environ["ENGAGEMENT_LAKE_DIR"] = str(lake_dir())
        lake = LocalLake(root=str(lake_dir()))
        catalog = LocalCatalog()
        warehouse = DuckDBWarehouse(path=str(warehouse_path()))
    # The dbt beside this interpreter, so an unactivated virtual environment still works.
    dbt_executable = shutil.which("dbt") or str(Path(sys.executable).parent / "dbt")
    return {"lake": lake, "catalog": catalog, "warehouse": warehouse,
            # Held from a run's start to its end: one writer per lake (defs/resources/lease.py).
            "writer_lease": WriterLease(lake=lake),
            # The knowledge base's embedding model, loading in the background from a run's start.
            "kb_embeddings": KbEmbeddings(),
            "dbt": DbtCoreCliResource(project_dir=engagement_dbt, target="prod" if env == "aws" else "local",
                                      dbt_executable=dbt_executable,
                                      # dbt's events stream into the Dagster run; its JSON artifacts
                                      # and debug log file are read by nothing (~0.6 s a step).
                                      global_config_flags=["--no-write-json", "--log-level-file", "none"])}
