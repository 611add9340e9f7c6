"""The library underneath imports no Dagster: an API, the agent or a notebook can read the lake, the
warehouse, the catalog, the registry and the models without paying for (or coupling to) Dagster.
Each module is imported in a fresh interpreter and its sys.modules inspected."""

import subprocess
import sys

import pytest

PLAIN = [
    "storage", "results", "glue_tables", "settings", "contract", "sources", "ingest", "generator",
    "feature_roles", "training", "metrics", "evaluation", "registry", "scoring", "deploy_sizes",
    "kb.documents", "kb.index", "kb.embeddings", "kb.bedrock", "kb.llm", "kb.sql_tool", "kb.tools", "kb.agent",
    "kb.ask", "kb.evaluate",
]


@pytest.mark.parametrize("module", PLAIN)
def test_a_plain_module_imports_no_dagster(module):
    code = (f"import sys; import engagement_dagster.{module}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_dbt', 'dagster_aws', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"engagement_dagster.{module} imports {out.strip()}"


def test_the_resources_wrap_the_plain_classes(tmp_path):
    from engagement_dagster.lake import LocalLake, S3Lake
    from engagement_dagster.storage import LocalStore, S3Store

    lake = LocalLake(root=str(tmp_path))
    assert isinstance(lake.store(), LocalStore)
    lake.write_bytes("a/b.txt", b"x")
    assert LocalStore(tmp_path).read_bytes("a/b.txt") == b"x" and lake.list_keys("a/") == ["a/b.txt"]
    assert isinstance(S3Lake(bucket="b", prefix="p").store(), S3Store)
    assert S3Lake(bucket="b", prefix="p").uri("k") == "s3://b/p/k"
