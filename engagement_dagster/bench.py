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

Memory is reported twice per size: the CLI process's own peak (ru_maxrss, from the timings file) and
the peak of the summed RSS of its whole process tree (dbt subprocesses, scoring workers), sampled
every 0.1 s with psutil. Summed RSS counts pages shared between processes (a forked worker's
copy-on-write pages) once per process, so it errs high: an upper bound of what the tree holds.

With several sizes the report ends with a scaling table (one column per size, the growth exponent
between the two largest) and a log-log plot (`--plot`, docs/img/scaling.png by default); every run's
numbers go to `--json-out` (.bench-data/bench-<UTC timestamp>.json by default). Progress lines go to
stderr as each run ends. `--keep-lake` leaves the last run's lake (.lake-bench, its warehouse.duckdb
included) for `python -m engagement_dagster.bench --learning-curve --warehouse .lake-bench/warehouse.duckdb`
(engagement_dagster/bench_learning_curve.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
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


SAMPLE_SECONDS = 0.1


def tree_rss(root) -> tuple[int, int, int]:
    """RSS of a psutil.Process now, the summed RSS of all its descendants, and how many processes
    the tree has; (0, 0, 0) once the root has exited."""
    import psutil

    try:
        children = root.children(recursive=True)
        own = root.memory_info().rss
    except psutil.NoSuchProcess:  # a zombie too: it has exited, and holds no memory
        return 0, 0, 0
    below = 0
    for process in children:
        try:
            below += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # exited between the listing and the read
            pass
    return own, below, 1 + len(children)


def tree_rss_bytes(root) -> int:
    """Summed RSS of a psutil.Process and all its descendants now; 0 once the root has exited."""
    own, below, _ = tree_rss(root)
    return own + below


class TreeRssSampler:
    """Peak summed RSS of a process tree, sampled on a background thread every `interval` seconds
    from `start()` (or entering the `with`) until `stop()`: a spike shorter than the interval can be
    missed, so the CLI process's own ru_maxrss is reported beside it. Also kept: the peak of the
    descendants alone (dbt, workers) and the most processes seen at once."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self.peak_descendants_bytes = 0
        self.max_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"rss-sampler-{pid}", daemon=True)

    def _loop(self) -> None:
        while True:
            own, below, processes = tree_rss(self.root)
            self.peak_bytes = max(self.peak_bytes, own + below)
            self.peak_descendants_bytes = max(self.peak_descendants_bytes, below)
            self.max_processes = max(self.max_processes, processes)
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def start(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes

    def __enter__(self) -> TreeRssSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _run_once(customers: int, env: dict, workdir: Path) -> dict:
    timings = workdir / "timings.json"
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "engagement_dagster.cli", "run", "--customers", str(customers),
                              "--weeks", "1", "--timings-json", str(timings)], cwd=PROJECT_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeRssSampler(child.pid) as sampler:
        stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    if child.returncode != 0:  # the run's summary says where it stopped and why (STOPPED at …)
        raise SystemExit(f"refresh of {customers:,} customers failed:\n{stdout[-4000:]}{stderr[-4000:]}")
    result = json.loads(timings.read_text())
    result["wall_seconds"] = wall
    result["tree_peak_rss_mib"] = sampler.peak_bytes / 2**20
    result["descendants_peak_rss_mib"] = sampler.peak_descendants_bytes / 2**20
    result["max_processes"] = sampler.max_processes
    result["rss_samples"] = sampler.samples
    return result


def bench(customers: int, repeat: int) -> list[dict]:
    runs = []
    for i in range(repeat):
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
        run = runs[-1]
        # A large size takes many minutes: say how far it got.
        print(f"bench: {customers:,} customers, run {i + 1}/{repeat}: {run['wall_seconds']:.1f} s wall, "
              f"peak RSS {run['tree_peak_rss_mib']:,.0f} MiB process tree / {run['peak_rss_mib']:,.0f} MiB CLI process "
              f"/ {run['descendants_peak_rss_mib']:,.0f} MiB its descendants (up to {run['max_processes']} processes)",
              file=sys.stderr, flush=True)
    return runs


def summarize(runs: list[dict]) -> dict:
    """One size's runs as the report shows them: the median of each time, the largest peak RSS."""
    def median(values):
        return statistics.median(values)

    summary = {
        "steps": {step: median([r["steps"].get(step, float("nan")) for r in runs]) for step in STAGES},
        "job_seconds": median([r["job_seconds"] for r in runs]),
        "wall_seconds": median([r["wall_seconds"] for r in runs]),
        "tree_peak_rss_mib": max(r.get("tree_peak_rss_mib", float("nan")) for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }
    # As the 100K table has always shown it: median wall less median job.
    summary["outside_job_seconds"] = summary["wall_seconds"] - summary["job_seconds"]
    return summary


def report(customers: int, runs: list[dict]) -> str:
    summary = summarize(runs)
    lines = [f"## {customers:,} customers — median of {len(runs)} run(s)", "",
             "| stage | seconds |", "|---|---|"]
    for step, label in STAGES.items():
        lines.append(f"| {label} | {summary['steps'][step]:.1f} |")
    job, wall = summary["job_seconds"], summary["wall_seconds"]
    lines += [
        f"| Dagster job (all stages + orchestration) | {job:.1f} |",
        f"| outside the job (imports, definitions, the instance, the summary) | {wall - job:.1f} |",
        f"| **total wall, cold start included** | **{wall:.1f}** |",
        "",
        "all runs (wall s): " + ", ".join(f"{r['wall_seconds']:.1f}" for r in runs) + "; "
        f"peak RSS of the Python process: {summary['peak_rss_mib']:,.0f} MiB; "
        f"of the whole process tree (dbt and workers included, summed RSS sampled every {SAMPLE_SECONDS} s): "
        f"{summary['tree_peak_rss_mib']:,.0f} MiB",
    ]
    return "\n".join(lines)


def growth_exponent(n1: float, t1: float, n2: float, t2: float) -> float | None:
    """k in t ∝ n^k between two sizes: log(t2/t1)/log(n2/n1); None where undefined (a time not
    positive or not a number, or the same size twice)."""
    if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in (n1, t1, n2, t2)) or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def _scaling_rows(summaries: dict[int, dict]) -> list[tuple[str, str, dict[int, float]]]:
    """(label, number format, value per size) for every row of the scaling table, stages first."""
    def per_size(get):
        return {n: get(s) for n, s in summaries.items()}

    rows = [(label, "{:.1f}", per_size(lambda s, step=step: s["steps"][step])) for step, label in STAGES.items()]
    rows += [
        ("Dagster job (all stages + orchestration)", "{:.1f}", per_size(lambda s: s["job_seconds"])),
        ("outside the job (imports, definitions, the instance, the summary)", "{:.1f}",
         per_size(lambda s: s["outside_job_seconds"])),
        ("**total wall, cold start included**", "**{:.1f}**", per_size(lambda s: s["wall_seconds"])),
        ("peak RSS, whole process tree (MiB)", "{:,.0f}", per_size(lambda s: s["tree_peak_rss_mib"])),
        ("peak RSS, CLI process alone (MiB)", "{:,.0f}", per_size(lambda s: s["peak_rss_mib"])),
    ]
    return rows


def _fmt(template: str, value: float) -> str:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        return "–"
    text = template.format(value)
    return text.replace("-", "", 1) if not text.strip("-0.,*") else text  # a tiny negative shows as 0.00, not -0.00


def scaling_exponents(summaries: dict[int, dict]) -> dict[str, float | None]:
    """Each row's growth exponent between the two largest sizes measured ({} with fewer than two)."""
    sizes = sorted(summaries)
    if len(sizes) < 2:
        return {}
    n1, n2 = sizes[-2:]
    return {label.strip("*"): growth_exponent(n1, values[n1], n2, values[n2])
            for label, _, values in _scaling_rows(summaries)}


def scaling_table(summaries: dict[int, dict], repeat: int) -> str:
    """Per-stage seconds (and peak RSS) with one column per size, smallest first, and the growth
    exponent between the two largest sizes."""
    sizes = sorted(summaries)
    exponents = scaling_exponents(summaries)
    header = ["stage", *(f"{n:,}" for n in sizes)]
    if exponents:
        header.append(f"growth exponent {sizes[-2]:,} → {sizes[-1]:,}")
    title = (f"## scaling — seconds per stage by customers (median of {repeat} run(s) per size; peak RSS: "
             "largest over the runs)")
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, template, values in _scaling_rows(summaries):
        cells = [label, *(_fmt(template, values[n]) for n in sizes)]
        if exponents:
            cells.append(_fmt("{:.2f}", exponents[label.strip("*")]))
        lines.append("| " + " | ".join(cells) + " |")
    if exponents:
        lines += ["", ("growth exponent k: time ∝ customers^k between the two largest sizes, log(t2/t1)/log(n2/n1); "
                       "1 is linear, below 1 fixed costs still dominate, above 1 worse than linear.")]
    return "\n".join(lines)


def plot_scaling(summaries: dict[int, dict], path: Path, machine: str = "") -> Path:
    """Log-log seconds against customers: one line per stage and the total wall, with a linear guide."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed for a PNG
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = sorted(summaries)
    fig, ax = plt.subplots(figsize=(12, 6))
    series = [(label, [summaries[n]["steps"][step] for n in sizes]) for step, label in STAGES.items()]
    series.append(("total wall, cold start included", [summaries[n]["wall_seconds"] for n in sizes]))
    for label, seconds in series:
        points = [(n, s) for n, s in zip(sizes, seconds, strict=True) if math.isfinite(s) and s > 0]
        if not points:  # a stage that did not run (or took no time) has nothing to draw on a log axis
            continue
        total = label.startswith("total")
        ax.plot(*zip(*points, strict=True), marker="o", linewidth=2.5 if total else 1.4,
                color="black" if total else None, label=label)
    total_points = [(n, summaries[n]["wall_seconds"]) for n in sizes if summaries[n]["wall_seconds"] > 0]
    if total_points:
        n0, t0 = total_points[0]
        ax.plot(sizes, [t0 * n / n0 for n in sizes], linestyle=":", color="grey", label="linear (from the first total)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("customers")
    ax.set_ylabel("seconds (median per size)")
    ax.set_title("weekly refresh: seconds per stage against customers" + (f"\n{machine}" if machine else ""),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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


def bench_ingest(rows: int) -> dict:
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
    return {**result, "wall_seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "parquet_mib": parquet_mib,
            "csv_gib": csv_path.stat().st_size / 2**30}


def report_ingest(result: dict) -> str:
    return "\n".join([
        f"## ingest of a {result['rows']:,}-row CSV ({result['csv_gib']:.2f} GiB, 49 columns incl. PII)", "",
        "| step | seconds |", "|---|---|",
        f"| stream + validate + write Parquet + unique ids | {result['validate_write_seconds']:.1f} |",
        f"| profile (quality checks' input) | {result['total_seconds'] - result['validate_write_seconds']:.1f} |",
        f"| **process wall, start-up included** | **{result['wall_seconds']:.1f}** |", "",
        (f"peak RSS of the ingest process: {result['peak_rss_mib']:,.0f} MiB; "
         f"Parquet written: {result['parquet_mib']:,.0f} MiB"),
    ])


def _default_json_path() -> Path:
    return PROJECT_ROOT / ".bench-data" / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--learning-curve" in argv:  # the learning-curve tool has its own options
        from engagement_dagster import bench_learning_curve

        return bench_learning_curve.main([a for a in argv if a != "--learning-curve"])
    parser = argparse.ArgumentParser(prog="engagement-dagster-bench")
    parser.add_argument("--customers", type=int, nargs="*", default=[100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ingest-rows", type=int, default=0, help="also time ingest alone on a CSV of this many rows")
    parser.add_argument("--json-out", type=Path, help="every run's numbers as JSON "
                                                      "(default .bench-data/bench-<UTC timestamp>.json)")
    parser.add_argument("--plot", type=Path, help="log-log PNG of seconds per stage against customers (default "
                                                  "docs/img/scaling.png, drawn only when more than one size ran)")
    parser.add_argument("--no-plot", action="store_true", help="draw no plot")
    parser.add_argument("--keep-lake", action="store_true",
                        help="keep the last run's lake (.lake-bench), e.g. for --learning-curve on its warehouse")
    parser.add_argument("--learning-curve", action="store_true",
                        help="run the learning-curve tool instead (its options: bench_learning_curve -h)")
    parser.add_argument("--ingest-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ingest_child:
        _ingest_child(*args.ingest_child)
        return 0
    machine = _machine()
    print(f"machine: {machine}\n")
    started = datetime.now(UTC)
    sizes: dict[int, dict] = {}
    record = {"machine": machine, "started": started.isoformat(timespec="seconds"), "repeat": args.repeat,
              "rss_sample_seconds": SAMPLE_SECONDS, "sizes": []}
    json_path = args.json_out or _default_json_path()
    for customers in args.customers:
        runs = bench(customers, args.repeat)
        sizes[customers] = summarize(runs)
        record["sizes"].append({"customers": customers, "median": sizes[customers], "runs": runs})
        _write_json(json_path, record)  # after every size, so a long bench that dies keeps what it measured
        print(report(customers, runs), "\n", flush=True)
    if not args.keep_lake:
        shutil.rmtree(PROJECT_ROOT / ".lake-bench", ignore_errors=True)
    if len(sizes) > 1:
        print(scaling_table(sizes, args.repeat), "\n", flush=True)
        record["growth_exponents"] = scaling_exponents(sizes)
    plot_path = None if args.no_plot else args.plot or (PROJECT_ROOT / "docs/img/scaling.png" if len(sizes) > 1
                                                         else None)
    if plot_path is not None and sizes:
        record["plot"] = str(plot_scaling(sizes, plot_path, machine))
        print(f"plot: {plot_path}")
    if args.ingest_rows:
        record["ingest"] = bench_ingest(args.ingest_rows)
        print(report_ingest(record["ingest"]), "\n", flush=True)
    _write_json(json_path, record)
    print(f"results: {json_path}")
    return 0


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2, default=float))  # NaN stays NaN: Python's json reads it back
    partial.replace(path)


if __name__ == "__main__":
    sys.exit(main())
