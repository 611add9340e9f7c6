"""A run's start-up costs: slow set-up runs while the run waits on dbt, the definitions load without
the ML stack, and a new week does not make dbt re-parse the project."""

import json
import subprocess
import sys
import threading

import pytest

from engagement_dagster.core import idle_work
from engagement_dagster.core.kb import embeddings
from engagement_dagster.core.settings import PROJECT_ROOT


def test_registered_work_runs_once_on_its_own_thread_when_started():
    ran = []
    release = threading.Event()

    def work(tag):
        release.wait(5)
        ran.append((tag, threading.current_thread().name))

    idle_work.when_idle("probe", lambda: work("first"))
    idle_work.when_idle("probe", lambda: work("second"))  # the same name: replaces the first
    assert ran == []  # nothing runs before a step starts it
    (thread,) = idle_work.start()
    assert idle_work.start() == []  # started work is forgotten: a second start runs nothing again
    release.set()
    assert idle_work.wait() >= 0 and not thread.is_alive()
    assert ran == [("second", "idle-work-probe")]


def test_a_failure_in_idle_work_is_left_for_the_user():
    calls = []

    def failing():
        calls.append(1)
        raise RuntimeError("weights missing")

    idle_work.when_idle("failing", failing)
    idle_work.start()
    idle_work.wait()
    assert calls == [1]  # it ran, and its error did not escape the thread: the user's own call raises it


def test_the_definitions_load_without_scikit_learn_xgboost_or_torch():
    """Those cost ~1 s and ~4 s of imports: a process that only loads the definitions (the UI, a run's
    start) does not pay for them; the steps that use them import them."""
    code = ("import sys, engagement_dagster.definitions; "
            "print([m for m in ('sklearn', 'xgboost', 'torch', 'sentence_transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not embeddings.extra_installed(), reason="the [kb] extra is missing")
def test_a_run_loads_the_kb_model_while_dbt_runs(kb_run_facts):
    # kb_weeks materializes the whole graph twice with a fresh default embedder: the resource registered
    # the load at the run's start, and the dbt features step started it on its own thread.
    assert kb_run_facts["embedder_loaded_in"] == "idle-work-kb-embedder-load"


def test_a_new_week_makes_dbt_reparse_nothing(tmp_path, monkeypatch):
    """The week reaches dbt as an env var read at run time only: parse with one week, then compile with
    another; partial parsing finds no file changed, and the SQL names the new week."""
    from dbt.cli.main import dbtRunner

    from engagement_dagster.defs.dbt.project import engagement_dbt

    lake = tmp_path / "lake"
    lake.mkdir()
    monkeypatch.setenv("ENGAGEMENT_LAKE_DIR", str(lake))
    events = []
    common = ["--project-dir", str(engagement_dbt.project_dir), "--profiles-dir", str(engagement_dbt.project_dir),
              "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"), "--target", "local"]
    monkeypatch.setenv("ENGAGEMENT_SNAPSHOT_WEEK", "2026-11-09")
    assert dbtRunner().invoke(["parse", *common]).success
    monkeypatch.setenv("ENGAGEMENT_SNAPSHOT_WEEK", "2026-11-16")
    runner = dbtRunner(callbacks=[lambda event: events.append((event.info.name, event.info.msg))])
    compiled = runner.invoke(["compile", "--select", "stg_customers", *common])
    assert compiled.success
    partial = [msg for name, msg in events if name in ("PartialParsingEnabled", "UnableToPartialParse")]
    assert partial and "0 files changed" in partial[0], partial
    sql = json.loads((tmp_path / "target" / "manifest.json").read_text())["nodes"]["model.engagement.stg_customers"]
    assert "2026-11-16" in (sql.get("compiled_code") or "")
    assert "2026-11-09" not in (sql.get("compiled_code") or "")
