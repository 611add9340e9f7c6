"""The library underneath (engagement_dagster.core) imports no Dagster: an API, the agent or a notebook
can read the lake, the warehouse, the catalog, the registry and the models without paying for (or coupling to) Dagster.
Each module is imported in a fresh interpreter and its sys.modules inspected."""

import pkgutil
import subprocess
import sys

import pytest

import engagement_dagster.core

# Every module under engagement_dagster/core, found on disk, so a new one is checked without a list to keep.
PLAIN = sorted(m.name for m in pkgutil.walk_packages(engagement_dagster.core.__path__, "engagement_dagster.core."))


def test_the_core_holds_the_library():
    expected = {"settings", "storage.lake", "storage.warehouse", "storage.catalog", "data.contract", "data.sources",
                "data.snapshot", "data.generator", "ml.training", "ml.registry", "ml.scoring", "kb.agent", "kb.ask"}
    assert {f"engagement_dagster.core.{name}" for name in expected} <= set(PLAIN)


@pytest.mark.parametrize("module", PLAIN)
def test_a_plain_module_imports_no_dagster(module):
    code = (f"import sys; import {module}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_dbt', 'dagster_aws', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} imports {out.strip()}"


def test_the_resources_wrap_the_plain_classes(tmp_path):
    from engagement_dagster.core.storage.lake import LocalStore, S3Store
    from engagement_dagster.defs.resources.lake import LocalLake, S3Lake

    lake = LocalLake(root=str(tmp_path))
    assert isinstance(lake.store(), LocalStore)
    lake.write_bytes("a/b.txt", b"x")
    assert LocalStore(tmp_path).read_bytes("a/b.txt") == b"x" and lake.list_keys("a/") == ["a/b.txt"]
    assert isinstance(S3Lake(bucket="b", prefix="p").store(), S3Store)
    assert S3Lake(bucket="b", prefix="p").uri("k") == "s3://b/p/k"
