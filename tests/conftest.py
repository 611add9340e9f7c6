import pytest

from engagement_dagster.lake import LocalLake


@pytest.fixture
def lake_dir(tmp_path, monkeypatch):
    """A fresh local lake (and DuckDB warehouse) per test; the env var is what dbt reads."""
    root = tmp_path / "lake"
    root.mkdir()
    monkeypatch.setenv("ENGAGEMENT_LAKE_DIR", str(root))
    monkeypatch.setenv("ENGAGEMENT_ENV", "local")
    return root


@pytest.fixture
def lake(lake_dir):
    return LocalLake(root=str(lake_dir))
