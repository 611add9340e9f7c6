"""`python -m engagement_dagster.cli run`: the weekly refresh for one snapshot week, then a summary.

Runs the `weekly_refresh` job in this process against the Dagster instance in $DAGSTER_HOME, so
the run, its asset materializations and checks show up in `make ui` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from typing import TYPE_CHECKING

from engagement_dagster.settings import PROJECT_ROOT, environment, warehouse_path, where_things_are

if TYPE_CHECKING:  # Dagster is imported where a command needs it: `ask` runs without it
    import dagster as dg


def step_seconds(result: dg.ExecuteInProcessResult) -> dict[str, float]:
    """Wall seconds of each step (ingest, dbt features, training, scoring, dbt scoring)."""
    import dagster as dg

    starts, seconds = {}, {}
    for entry in dg.DagsterInstance.get().all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            seconds[event.step_key] = entry.timestamp - starts[event.step_key]
    return seconds


def run(week: str | None, n_customers: int, source: str | None, seed: int, timings_json: str | None = None) -> int:
    import dagster as dg

    from engagement_dagster.definitions import defs  # imported here: dagster-dbt, xgboost take seconds
    from engagement_dagster.partitions import weekly_partitions

    # Runs land in the instance `make ui` opens, whether or not DAGSTER_HOME was set.
    home = os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home"))
    os.makedirs(home, exist_ok=True)
    week = week or weekly_partitions.get_last_partition_key()
    config = {"n_customers": n_customers, "seed": seed, **({"source_uri": source} if source else {})}
    started = time.perf_counter()
    result = defs.resolve_job_def("weekly_refresh").execute_in_process(
        partition_key=week,
        # The console gets the summary below, not Dagster's event stream: every event, stack
        # traces included, is in the run's log (make ui → Runs).
        run_config={"ops": {"ingest__raw_customers": {"config": config}},
                    "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        instance=dg.DagsterInstance.get(),
        raise_on_error=False,
    )
    elapsed = time.perf_counter() - started
    steps = step_seconds(result)
    print(summary(result, week, elapsed, steps))
    if timings_json:
        with open(timings_json, "w") as handle:
            json.dump({"week": week, "customers": n_customers, "success": result.success,
                       "job_seconds": elapsed, "steps": steps,
                       # ru_maxrss is in KiB on Linux. (dbt subprocesses are far smaller.)
                       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
                      handle, indent=2)
    return 0 if result.success else 1


def summary(result: dg.ExecuteInProcessResult, week: str, elapsed: float, steps: dict[str, float]) -> str:
    import dagster as dg

    from engagement_dagster.training import MODEL_KINDS
    materialized = result.get_asset_materialization_events()
    checks = result.get_asset_check_evaluations()
    failed = [c for c in checks if not c.passed]
    warned = [c for c in failed if c.severity == dg.AssetCheckSeverity.WARN]
    rows = {}
    for event in materialized:
        mat = event.event_specific_data.materialization
        count = mat.metadata.get("dagster/row_count")
        rows[mat.asset_key.to_user_string()] = count.value if count is not None else None
    rows.update(_dbt_row_counts([key for key, n in rows.items() if n is None]))
    model_lines = []
    for event in materialized:
        mat = event.event_specific_data.materialization
        if mat.asset_key.path[0] != "models":
            continue
        name = mat.asset_key.path[-1]
        metric = MODEL_KINDS[name].primary_metric
        meta = {k: v.value for k, v in mat.metadata.items()}
        oracle = meta.get(f"oracle_{metric}")
        if meta["promoted"]:
            verdict = "promoted"
        elif meta.get("serving") == "baseline":
            verdict = "NOT promoted: no champion yet, the naive baseline serves (version 'baseline')"
        else:
            verdict = "NOT promoted: champion kept"
        model_lines.append(
            f"    {name:<22} {metric} {meta[f'test_{metric}']:.4g} (baseline {meta[f'baseline_{metric}']:.4g}"
            + (f", oracle ceiling {oracle:.4g}" if oracle is not None else "") + ")  " + verdict)
    kb_lines = []
    for event in materialized:
        mat = event.event_specific_data.materialization
        if mat.asset_key.to_user_string() == "knowledge_base/kb_index":
            meta = {k: v.value for k, v in mat.metadata.items()}
            kb_lines = [(f"  knowledge base: {meta['documents']} documents, {meta['chunks']} chunks "
                         f"({meta['status']}; {meta['backend']})"),
                        '  ask:       .venv/bin/engagement-dagster ask "Which segments have the highest churn risk?"']
    lines = [
        (f"weekly refresh for snapshot week {week} ({environment()}): "
         f"{'succeeded' if result.success else 'FAILED'} in {elapsed:.1f} s"),
        "  steps: " + ", ".join(f"{step} {sec:.1f} s" for step, sec in steps.items()),
        f"  assets materialized: {len(materialized)}",
        *(f"    {key:<40} {'' if n is None else f'{n:,} row' + ('' if n == 1 else 's')}"
          for key, n in sorted(rows.items())),
        *(["  models (test split):", *model_lines] if model_lines else []),
        f"  asset checks: {len(checks) - len(failed)} passed, {len(failed) - len(warned)} failed, "
        f"{len(warned)} warning(s)"
        + "".join(f"\n    {'WARNING' if c.severity == dg.AssetCheckSeverity.WARN else 'FAILED'} "
                  f"{c.asset_key.to_user_string()}:{c.check_name}"
                  + (f": {c.description}" if c.description else "") for c in failed),
        *_refusals(result),
        *kb_lines,
        *(f"  {name + ':':<10} {where}" for name, where in where_things_are().items()),
        "  UI:        make ui  → http://127.0.0.1:3000 (lineage, runs, checks)",
    ]
    return "\n".join(lines)


def _refusals(result: dg.ExecuteInProcessResult) -> list[str]:
    """Why the run stopped, in one line per failed step (the stack trace stays in the run's log)."""
    lines = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",):
                error = error.cause
            # "package.module.ClassName: text" → "text"
            message = re.sub(rf"^[\w.]*{error.cls_name}: ", "", error.message.strip()).splitlines()[0]
            lines.append(f"  STOPPED at {event.step_key}: {message}")
    if lines:
        lines.append("  (the full trace is in the run's log: make ui → Runs)")
    return lines


def _dbt_row_counts(asset_keys: list[str]) -> dict[str, int]:
    """Rows of the dbt tables, read from the local DuckDB warehouse after the run (dbt's events
    carry no row counts, and counting on Athena would cost a query each)."""
    if environment() != "local" or not warehouse_path().exists():
        return {}
    import duckdb

    counts = {}
    with duckdb.connect(str(warehouse_path()), read_only=True) as con:
        tables = {name for (name,) in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main'").fetchall()}
        for key in asset_keys:
            name = key.split("/")[-1]
            if name in tables:
                counts[key] = con.execute(f'select count(*) from main."{name}"').fetchone()[0]
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engagement-dagster")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="materialize the whole weekly refresh for one week")
    run_parser.add_argument("--week", help="snapshot week (a Monday, YYYY-MM-DD); default: the last closed week")
    run_parser.add_argument("--customers", type=int, default=100_000, help="synthetic customers (default 100000)")
    run_parser.add_argument("--source", help="CSV/Parquet path or URI instead of the synthetic generator")
    run_parser.add_argument("--seed", type=int, default=42)
    run_parser.add_argument("--timings-json", help="write step timings to this file (used by `make bench`)")
    sub.add_parser("ask", add_help=False, help="ask the week's knowledge base a question (offline by default)")
    sub.add_parser("export-sfn", add_help=False,
                   help="write today's graph as a Step Functions state machine + weekly rule (deploy/step_functions/)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "ask":
        from engagement_dagster.kb.ask import ask_main

        return ask_main(rest)
    if args.command == "export-sfn":
        import warnings

        import dagster as dg

        for category in (dg.BetaWarning, dg.PreviewWarning):  # Dagster's own API notes, not the user's business
            warnings.filterwarnings("ignore", category=category)
        from engagement_dagster.export.step_functions import export_sfn_main

        return export_sfn_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run(args.week, args.customers, args.source, args.seed, args.timings_json)


if __name__ == "__main__":
    sys.exit(main())
