"""`make bench`: wall time of the full weekly refresh, per stage, cold start included.

Each repetition is a fresh process on a fresh lake and Dagster instance (so every model is a
first version and every dbt model is built from nothing), timed from process start to exit: one
week of `make run` after setup (`engagement-dagster run --weeks 1`; `make run`'s default history
runs 4 such weeks, each gated against the week before). The dbt manifest is prepared once
beforehand for the benchmark's lake, in its own dbt target directory, exactly as `make setup` does
for `.lake`.

    python -m engagement_dagster.bench [--customers 100000 1000000] [--repeat 3] [--ingest-rows 10000000]

`--ingest-rows N` also times `raw_customers`' ingest alone on an N-row CSV in the seed's format
(written once by the generator into .bench-data/, untimed): stream, validate, write Parquet in row
groups, check ids and profile, in a fresh process whose peak RSS is measured.
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

from engagement_dagster.core.settings import PROJECT_ROOT

STAGES = {
    "ingest__raw_customers": "ingest (generate + validate + write)",
    "dbt_features": "dbt features (+ tests)",
    "train_models": "train six models + gate",
    "scoring__customer_predictions": "score + drivers + shards",
    "dbt_scoring": "dbt marts (+ tests)",
    "knowledge_base__kb_documents": "knowledge-base documents",
    "knowledge_base__kb_index": "knowledge-base index (chunks, BM25, embeddings)",
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
                           "--weeks", "1", "--timings-json", str(timings)], cwd=PROJECT_ROOT, env=env,
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
                            "--file", "engagement_dagster/defs/dbt/project.py"], cwd=PROJECT_ROOT, env=env, check=True,
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
        f"| outside the job (imports, definitions, the instance, the summary) | {wall - job:.1f} |",
        f"| **total wall, cold start included** | **{wall:.1f}** |",
        "",
        "all runs (wall s): " + ", ".join(f"{r['wall_seconds']:.1f}" for r in runs) + "; "
        f"peak RSS of the Python process: {max(r['peak_rss_mib'] for r in runs):,.0f} MiB",
    ]
    return "\n".join(lines)


def _ingest_csv(rows: int) -> Path:
    """An N-row CSV of the contract's 42 columns plus the generator's extras (PII included),
    written block by block; kept between runs because writing 10M rows takes minutes."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from engagement_dagster.core.data.generator import generate_chunks

    path = PROJECT_ROOT / ".bench-data" / f"customers_{rows}.csv"
    if path.exists():
        return path
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    writer = None
    for chunk in generate_chunks(rows, "2026-11-09"):
        table = pa.Table.from_pandas(chunk.customers, preserve_index=False)
        if writer is None:
            writer = pacsv.CSVWriter(partial, table.schema)
        writer.write_table(table)
    writer.close()
    partial.rename(path)
    return path


def _ingest_child(csv_path: str, out_dir: str) -> None:
    """Runs in its own process: the ingest as `raw_customers` does it, timed."""
    from engagement_dagster.core.data import snapshot

    started = time.perf_counter()
    result = snapshot.ingest_source(csv_path, Path(out_dir) / "customers.parquet")
    validated = time.perf_counter() - started
    snapshot.profile(Path(out_dir) / "customers.parquet")
    print(json.dumps({"rows": result.rows, "validate_write_seconds": validated,
                      "total_seconds": time.perf_counter() - started}))


def bench_ingest(rows: int) -> str:
    csv_path = _ingest_csv(rows)
    with tempfile.TemporaryDirectory(prefix="engagement-ingest-bench-") as out:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "engagement_dagster.bench", "--ingest-child", str(csv_path),
                                  out], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
        stdout = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)  # the rusage of this child (and its threads) alone
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("ingest benchmark failed")
        result = json.loads(stdout.strip().splitlines()[-1])
        parquet_mib = (Path(out) / "customers.parquet").stat().st_size / 2**20
    csv_gib = csv_path.stat().st_size / 2**30
    return "\n".join([
        f"## ingest of a {result['rows']:,}-row CSV ({csv_gib:.2f} GiB, 49 columns incl. PII)", "",
        "| step | seconds |", "|---|---|",
        f"| stream + validate + write Parquet + unique ids | {result['validate_write_seconds']:.1f} |",
        f"| profile (quality checks' input) | {result['total_seconds'] - result['validate_write_seconds']:.1f} |",
        f"| **process wall, start-up included** | **{wall:.1f}** |", "",
        f"peak RSS of the ingest process: {usage.ru_maxrss / 1024:,.0f} MiB; Parquet written: {parquet_mib:,.0f} MiB",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engagement-dagster-bench")
    parser.add_argument("--customers", type=int, nargs="*", default=[100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ingest-rows", type=int, default=0, help="also time ingest alone on a CSV of this many rows")
    parser.add_argument("--ingest-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ingest_child:
        _ingest_child(*args.ingest_child)
        return 0
    print(f"machine: {_machine()}\n")
    for customers in args.customers:
        print(report(customers, bench(customers, args.repeat)), "\n", flush=True)
    shutil.rmtree(PROJECT_ROOT / ".lake-bench", ignore_errors=True)
    if args.ingest_rows:
        print(bench_ingest(args.ingest_rows), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
