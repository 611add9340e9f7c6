"""Crash-safe reruns (issue 13): a weekly run killed with SIGKILL in the middle of each heavy stage,
then run again, leaves the same lake as a rerun that was never interrupted.

Real processes: `engagement-dagster run` in its own process group, killed by the fault-injection
points of `engagement_dagster.core.faults` (the whole group, so dbt's subprocess dies too). The runs
start from a copy of the two-week lake of `kb_weeks` and run its second week again. After each kill:
the lease is free, no listed model version or champion comes from the killed training, every model
version on disk is complete. After the last rerun the lake equals the uninterrupted rerun's: the raw
snapshot, oracle and profiles byte for byte; predictions, warehouse tables and knowledge-base
documents equal once model version ids and scoring times are set aside; the champions' model files
byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engagement_dagster.core import faults
from engagement_dagster.core.kb import index as kb_index
from engagement_dagster.core.ml.registry import COMMITS_PREFIX, ModelRegistry
from engagement_dagster.core.ml.training import MODEL_KINDS
from engagement_dagster.core.storage import warehouse
from engagement_dagster.core.storage.lake import LocalStore
from engagement_dagster.core.storage.lease import current_holder
from tests.conftest import KB_CUSTOMERS, KB_WEEKS

PROJECT = Path(__file__).resolve().parents[1]
WEEK = KB_WEEKS[-1]
VERSION_ID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")
BEFORE_TRAINING_COMMITS = ("ingest", "dbt_features", "training", "promotion")


def run_week(root: Path, home: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENGAGEMENT_ENV": "local", "ENGAGEMENT_LAKE_DIR": str(root), "DAGSTER_HOME": str(home)}
    env.pop(faults.KILL_AT_ENV, None)
    if kill_at:
        env[faults.KILL_AT_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "engagement_dagster.cli", "run", "--week", WEEK,
                           "--customers", str(KB_CUSTOMERS)], check=False, cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=900, start_new_session=True)


def registry_state(root: Path) -> dict:
    registry = ModelRegistry(LocalStore(root))
    return {name: {"versions": registry.versions(name), "champion": (registry.champion(name) or {}).get("version")}
            for name in MODEL_KINDS}


def _normalized(value: str) -> str:
    return VERSION_ID.sub("<version>", value)


def _table_digest(rows: list[dict]) -> str:
    rows = [{k: v for k, v in row.items() if k != "scored_at"} for row in rows]
    return hashlib.sha256(_normalized(json.dumps(rows, default=str, sort_keys=True)).encode()).hexdigest()


def lake_view(root: Path) -> dict[str, str]:
    """What the comparison sees of each lake file outside the registry, the KB index and the DuckDB file."""
    view = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in key.split("/")) or key.startswith(("models/", "kb/index/")):
            continue
        if key == "warehouse.duckdb":
            continue
        if key.startswith(("raw/", "oracle/", "profiles/")):  # depend only on the data: byte for byte
            view[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif key.endswith(".parquet"):
            view[key] = _table_digest(pq.read_table(path).to_pylist())
        elif key.startswith("kb/") and key.endswith("/manifest.json"):
            # Each document's sha256 covers the version ids it names: checked against the file instead.
            manifest = json.loads(path.read_text())
            for entry in manifest["documents"]:
                document = path.parent / f"{entry['doc_id']}.md"
                assert hashlib.sha256(document.read_bytes()).hexdigest() == entry.pop("sha256"), document
            view[key] = hashlib.sha256(_normalized(json.dumps(manifest, sort_keys=True)).encode()).hexdigest()
        else:
            view[key] = hashlib.sha256(_normalized(path.read_text()).encode()).hexdigest()
    return view


def warehouse_view(root: Path) -> dict[str, str]:
    with warehouse.connect(root / "warehouse.duckdb", read_only=True) as con:
        tables = [row[0] for row in con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        return {t: _table_digest(con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetch_df().to_dict("records"))
                for t in tables}


def champion_files(root: Path) -> dict[str, dict[str, str]]:
    """Each model's champion files and baseline, byte for byte (version.json names the version: left out)."""
    registry = ModelRegistry(LocalStore(root))
    out = {}
    for name in MODEL_KINDS:
        version = registry.champion(name)["version"]
        folder = root / "models" / name / version
        out[name] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(folder.iterdir()) if p.name != "version.json"}
        out[name]["baseline.json"] = hashlib.sha256((root / "models" / name / "baseline.json").read_bytes()).hexdigest()
    return out


def assert_registry_whole(root: Path) -> None:
    """Every version folder on disk is listed (a complete version from a finished training), and no
    commit is left half done."""
    models = root / "models"
    keys = {p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file()}
    commits = [k.removeprefix("_commits/") for k in keys if k.startswith("_commits/")]
    assert all(c.removesuffix(".json") + ".done" in commits for c in commits if c.endswith(".json"))
    registry = ModelRegistry(LocalStore(root))
    for name in MODEL_KINDS:
        on_disk = sorted(p.name for p in (models / name).iterdir() if p.is_dir())
        assert on_disk == registry.versions(name), f"{name}: version folders not all listed"


@pytest.fixture(scope="module")
def start(kb_weeks, tmp_path_factory) -> Path:
    """The two-week lake, copied once (the runs below copy it again)."""
    root = tmp_path_factory.mktemp("crash") / "start"
    shutil.copytree(kb_weeks[0], root)
    return root


@pytest.fixture(scope="module")
def uninterrupted(start, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "uninterrupted"
    shutil.copytree(start, root)
    result = run_week(root, root.parent / "dagster_home")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_a_run_killed_at_each_stage_then_rerun_leaves_the_uninterrupted_lake(start, uninterrupted, tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(start, root)
    home = tmp_path / "dagster_home"
    store = LocalStore(root)
    for point in faults.POINTS:
        before = registry_state(root)
        result = run_week(root, home, kill_at=point)
        assert result.returncode == -signal.SIGKILL, f"not killed at {point}: {result.stdout}{result.stderr}"
        assert current_holder(store) is None  # the kernel let go of the killed run's lease
        after = registry_state(root)
        if point in BEFORE_TRAINING_COMMITS:  # the killed training changed nothing anyone reads
            assert after == before, f"killed at {point}"
        else:  # training finished before the kill: one more version per model, all from its commit
            for name in MODEL_KINDS:
                assert len(after[name]["versions"]) == len(before[name]["versions"]) + 1, (point, name)
        if point == "promotion":  # its version.json and baselines were on disk: listed by nobody
            unfinished = [k for k in store.list_keys(COMMITS_PREFIX) if k.endswith(".json")
                          and k.removesuffix(".json") + ".done" not in store.list_keys(COMMITS_PREFIX)]
            assert len(unfinished) == 1
    # What a write killed between its temporary file and the rename leaves (the kill points sit between
    # whole writes): never listed, and removed by the next writer.
    leftover = root / "raw" / "customers" / f"snapshot_week={WEEK}" / ".customers.parquet.x1y2z3.tmp"
    leftover.write_bytes(b"PAR1 half a file")
    assert not any(".tmp" in key for key in store.list_keys("raw/"))

    result = run_week(root, home)
    assert result.returncode == 0, result.stdout + result.stderr

    assert not leftover.exists() and not list(root.rglob(".*.tmp"))
    assert_registry_whole(root)
    assert champion_files(root) == champion_files(uninterrupted)
    assert lake_view(root) == lake_view(uninterrupted)
    assert warehouse_view(root) == warehouse_view(uninterrupted)
    shards = sorted(p.name for p in (root / "predictions" / f"snapshot_week={WEEK}").iterdir())
    assert shards == sorted(p.name for p in (uninterrupted / "predictions" / f"snapshot_week={WEEK}").iterdir())
    manifest = kb_index.read_index_manifest(store, WEEK)
    folders = [p.name for p in (root / kb_index.index_prefix(WEEK)).iterdir() if p.is_dir()]
    assert folders == [manifest["generation"]]  # one complete set of index files, the manifest's
    assert kb_index.search(store, WEEK, "which segment has the highest churn risk")


def test_the_comparison_sees_a_changed_prediction(uninterrupted, tmp_path):
    """The views above are not blind: one changed probability in one shard changes the lake's view."""
    root = tmp_path / "lake"
    shutil.copytree(uninterrupted, root)
    shard = next((root / "predictions" / f"snapshot_week={WEEK}").glob("*.parquet"))
    table = pq.read_table(shard)
    frame = table.to_pandas()
    frame.loc[0, "churn_probability"] = 1 - frame.loc[0, "churn_probability"]
    frame.to_parquet(shard, index=False)
    assert lake_view(root) != lake_view(uninterrupted)
