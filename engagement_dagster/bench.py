"""`make bench`: wall time of the full weekly refresh, per stage, cold start included.

Each repetition is a fresh process on a fresh lake and Dagster instance (so every model is a
first version and every dbt model is built from nothing), timed from process start to exit, as
a user's `make run` is after setup. The dbt manifest is prepared once beforehand for the
benchmark's lake, in its own dbt target directory, exactly as `make setup` does for `.lake`.

    python -m engagement_dagster.bench [--customers 100000 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engagement_dagster.settings import PROJECT_ROOT

STAGES = {
    "ingest__raw_customers": "ingest (generate + validate + write)",
    "dbt_features": "dbt features (+ tests)",
    "train_models": "train six models + gate",
    "scoring__customer_predictions": "score + drivers + shards",
    "dbt_scoring": "dbt marts (+ tests)",
}


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def _run_once(customers: int, env: dict, workdir: Path) -> dict:
    timings = workdir / "timings.json"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engagement_dagster.cli", "run", "--customers", str(customers),
                           "--timings-json", str(timings)], cwd=PROJECT_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"refresh failed:\n{done.stderr[-4000:]}")
    result = json.loads(timings.read_text())
    result["wall_seconds"] = wall
    return result


def bench(customers: int, repeat: int) -> list[dict]:
    runs = []
    for _ in range(repeat):
        workdir = Path(tempfile.mkdtemp(prefix="engagement-bench-"))
        # The environment's own bin first, so dagster-dbt finds its dbt even when run outside `make`.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "ENGAGEMENT_ENV": "local",
               "ENGAGEMENT_LAKE_DIR": str(PROJECT_ROOT / ".lake-bench"),
               "DAGSTER_HOME": str(workdir / "dagster_home"), "DBT_TARGET_PATH": "target-bench"}
        shutil.rmtree(PROJECT_ROOT / ".lake-bench", ignore_errors=True)
        (workdir / "dagster_home").mkdir()
        if not runs:  # setup, untimed: the manifest for this lake (what `make setup` does)
            subprocess.run([str(Path(sys.executable).parent / "dagster-dbt"), "project", "prepare-and-package",
                            "--file", "engagement_dagster/dbt_project.py"], cwd=PROJECT_ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        runs.append(_run_once(customers, env, workdir))
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def report(customers: int, runs: list[dict]) -> str:
    def median(values):
        return statistics.median(values)

    lines = [f"## {customers:,} customers — median of {len(runs)} run(s)", "",
             "| stage | seconds |", "|---|---|"]
    for step, label in STAGES.items():
        lines.append(f"| {label} | {median([r['steps'].get(step, float('nan')) for r in runs]):.1f} |")
    job = median([r["job_seconds"] for r in runs])
    wall = median([r["wall_seconds"] for r in runs])
    lines += [
        f"| Dagster job (all stages + orchestration) | {job:.1f} |",
        f"| process start-up (imports, definitions) | {wall - job:.1f} |",
        f"| **total wall, cold start included** | **{wall:.1f}** |",
        "",
        "all runs (wall s): " + ", ".join(f"{r['wall_seconds']:.1f}" for r in runs) + "; "
        f"peak RSS of the Python process: {max(r['peak_rss_mib'] for r in runs):,.0f} MiB",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engagement-dagster-bench")
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"machine: {_machine()}\n")
    for customers in args.customers:
        print(report(customers, bench(customers, args.repeat)), "\n", flush=True)
    shutil.rmtree(PROJECT_ROOT / ".lake-bench", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
