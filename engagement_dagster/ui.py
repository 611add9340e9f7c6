"""`make ui`: `dagster dev` on the local instance, stopped promptly by Ctrl-C or SIGTERM.

`dagster dev` shuts its webserver, daemon and code servers down on SIGINT but ignores SIGTERM, and
a process started in the background may inherit SIGINT as ignored. This wrapper starts it in its
own process group with SIGINT restored, turns SIGINT/SIGTERM into one SIGINT for the group, and
kills the group if it is still there after a grace period. It also gives the instance a
`dagster.yaml`, so start-up does not warn that there is none.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engagement_dagster.core.settings import PROJECT_ROOT

GRACE_SECONDS = 10.0
INSTANCE_YAML = """# The local Dagster instance of `make run` and `make ui`: runs, events and schedules in SQLite
# under this directory (Dagster's defaults). On AWS the instance is deploy/dagster.yaml (Postgres).
# Written by engagement-dagster (engagement_dagster/ui.py): edits are replaced; keep yours elsewhere.
telemetry:
  enabled: false

# Runs queue, as on AWS (deploy/dagster.yaml, same limits): one run per snapshot week, and one run
# that writes the lake at a time (the registry, the warehouse and the knowledge base are shared by
# every week), started in the order they were queued, so a backfill runs its weeks oldest first.
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    dequeue_interval_seconds: 2
    tag_concurrency_limits:
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: engagement/lake-writer
        limit: 1
"""
GENERATED_MARK = "# Written by engagement-dagster"


def instance_home() -> Path:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    # Ours (no file yet, or one an earlier version wrote): brought up to date. A file of your own is kept.
    text = config.read_text() if config.exists() else None
    ours = text is None or GENERATED_MARK in text or text.startswith("# The local Dagster instance of `make run`")
    if ours and text != INSTANCE_YAML:
        config.write_text(INSTANCE_YAML)
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engagement_dagster.ui")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="3000")
    args = parser.parse_args(argv)
    instance_home()
    dagster = Path(sys.executable).parent / "dagster"
    stopping: list[float] = []
    started: list[subprocess.Popen] = []

    def stop(signum, _frame):
        if not stopping:
            stopping.append(time.monotonic())
            print(f"\nstopping the Dagster UI ({signal.Signals(signum).name}) …", file=sys.stderr, flush=True)
            if started:
                os.killpg(started[0].pid, signal.SIGINT)

    # Handlers first: a handled signal is reset to the default in the child at exec (an ignored one
    # would stay ignored there).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # `dagster dev -m` keeps the code location named after the module, as `make run` names it; the
    # note that `dg dev` supersedes it is Dagster's business, not the user's: hidden.
    quiet = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:Function `dev_command` is superseded"]))
    child = subprocess.Popen([str(dagster), "dev", "-m", "engagement_dagster.definitions", "-h", args.host,
                              "-p", args.port], process_group=0, env={**os.environ, "PYTHONWARNINGS": quiet})
    started.append(child)
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stopping and time.monotonic() - stopping[0] > GRACE_SECONDS:
                os.killpg(child.pid, signal.SIGKILL)  # webserver, daemon and code servers with it
                child.wait()
                return 130


if __name__ == "__main__":
    sys.exit(main())
