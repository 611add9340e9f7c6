"""`python -m engagement_dagster.cli run`: the weekly refresh, for one week or a history of weeks, then a summary.

Each week is a run of the code location's `weekly_refresh` job in the Dagster instance in $DAGSTER_HOME
(what `make ui` opens): created the way the UI creates a launched run (the job's snapshot, the code
location's origin, the job's tags, the week's partition tags), then executed in this process, as a
run worker executes a launched run. So the UI lists it under the job (Jobs, Runs, Overview) with its
partition, and can re-execute it. Several weeks (`--weeks N`, `make run WEEKS=N`) are a backfill of
the job (Overview → Backfills), whose runs execute one after the other, oldest week first: a week's
models are gated against the champions of the week before. A failed week stops the history; the
weeks after it are canceled.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import json
import os
import re
import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import TYPE_CHECKING

from engagement_dagster.core.settings import PROJECT_ROOT, environment, warehouse_path, where_things_are

if TYPE_CHECKING:  # Dagster is imported where a command needs it: `ask` runs without it
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

JOB = "weekly_refresh"
DEFINITIONS_MODULE = "engagement_dagster.definitions"


class UsageError(Exception):
    """A request the partitions cannot serve (a week outside them, no weeks); said in one line."""


def location_name() -> str:
    """The code location's name, under which the UI lists the job's runs: `make ui` (`dagster dev -m
    engagement_dagster.definitions`) names it after the module; on ECS, $DAGSTER_CODE_LOCATION_NAME."""
    return os.environ.get("DAGSTER_CODE_LOCATION_NAME") or DEFINITIONS_MODULE


class RunResult:
    """A finished run read back from the instance, offering what `summary` reads of an
    `ExecuteInProcessResult` (success, the run's events, its materializations and check evaluations)."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str):
        self.run_id = run_id
        self.dagster_run = instance.get_run_by_id(run_id)
        self.entries = [entry for entry in instance.all_logs(run_id) if entry.dagster_event is not None]
        self.all_events = [entry.dagster_event for entry in self.entries]

    @property
    def success(self) -> bool:
        import dagster as dg

        return self.dagster_run.status == dg.DagsterRunStatus.SUCCESS

    def get_asset_materialization_events(self) -> list:
        return [event for event in self.all_events if event.event_type_value == "ASSET_MATERIALIZATION"]

    def get_asset_check_evaluations(self) -> list:
        return [event.event_specific_data for event in self.all_events
                if event.event_type_value == "ASSET_CHECK_EVALUATION"]


class WeeklyRefresh:
    """The `weekly_refresh` job as the code location serves it to the UI, and runs of it in this process.

    The code location is loaded in process (no code server), under the name `make ui` gives it."""

    def __init__(self, instance: dg.DagsterInstance):
        from contextlib import ExitStack

        self.instance = instance
        self._stack = ExitStack()

    def __enter__(self) -> WeeklyRefresh:
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE,
                                 working_directory=str(PROJECT_ROOT)),
            location_name=location_name())
        process = self._stack.enter_context(
            WorkspaceProcessContext(self.instance, InProcessWorkspaceLoadTarget(origin)))
        self.workspace = process.create_request_context()
        self.location = self.workspace.get_code_location(origin.location_name)
        (self.repository,) = self.location.get_repositories().values()
        self.job = self.repository.get_full_job(JOB)
        self.partition_set = next(partition_set for partition_set in self.repository.get_partition_sets()
                                  if partition_set.job_name == JOB)
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def partition_tags(self, weeks: list[str]) -> dict[str, dict[str, str]]:
        """The tags the job's partition set gives each week's run (`dagster/partition`, …)."""
        params = self.location.get_partition_set_execution_params(
            self.repository.handle, self.partition_set.name, weeks, self.instance)
        return {data.name: dict(data.tags) for data in params.partition_data}

    def create_run(self, week: str, run_config: dict, tags: dict[str, str]) -> DagsterRun:
        """A run of the job for one week, not started: what the UI's launch creates."""
        import dagster as dg
        from dagster._core.utils import make_new_run_id

        plan = self.location.get_execution_plan(self.job, run_config, step_keys_to_execute=None, known_state=None,
                                                instance=self.instance)
        return self.instance.create_run(
            job_name=self.job.name, run_id=make_new_run_id(), run_config=run_config,
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={**self.job.tags, **self.partition_tags([week])[week], **tags},
            root_run_id=None, parent_run_id=None, step_keys_to_execute=None,
            execution_plan_snapshot=plan.execution_plan_snapshot, job_snapshot=self.job.job_snapshot,
            parent_job_snapshot=self.job.parent_job_snapshot, asset_selection=None, asset_check_selection=None,
            resolved_op_selection=None, op_selection=None, remote_job_origin=self.job.get_remote_origin(),
            job_code_origin=self.job.get_python_origin(), asset_graph=self.repository.asset_graph)

    def create_backfill(self, weeks: list[str], run_config: dict, tags: dict[str, str]):
        """A backfill of the job over `weeks` and its runs, one per week in order, not started.

        Recorded as `dagster job backfill` records one (a job backfill of the partition set, the
        backfill's tags and run config on every run), with every week already submitted: a daemon
        that sees it (`make ui` open meanwhile) only waits for its runs to finish."""
        from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
        from dagster._core.execution.job_backfill import create_backfill_run
        from dagster._core.utils import make_new_backfill_id
        from dagster._time import get_current_timestamp

        backfill = PartitionBackfill(
            backfill_id=make_new_backfill_id(), status=BulkActionStatus.REQUESTED, from_failure=False, tags=tags,
            backfill_timestamp=get_current_timestamp(),
            title=f"make run: {len(weeks)} weeks, {weeks[0]} to {weeks[-1]}",
            description="History of the weekly refresh, run week after week, oldest first, by "
                        "`engagement-dagster run --weeks`.",
            run_config=run_config, partition_set_origin=self.partition_set.get_remote_origin(),
            partition_names=weeks, last_submitted_partition_name=weeks[-1])
        self.instance.add_backfill(backfill)
        partition_tags = self.partition_tags(weeks)
        runs = [create_backfill_run(self.workspace, self.instance, self.location, self.job, self.partition_set,
                                    backfill, week, partition_tags[week], run_config) for week in weeks]
        return backfill, runs

    def execute(self, run: DagsterRun) -> RunResult:
        """Executes a created run in this process, as a run worker does, and reads it back."""
        from dagster._core.execution.api import execute_run
        from dagster._utils.hosted_user_process import recon_job_from_origin

        execute_run(recon_job_from_origin(run.job_code_origin), run, self.instance)
        return RunResult(self.instance, run.run_id)


def history(last: str | None, weeks: int) -> tuple[list[str], str | None]:
    """`weeks` consecutive weeks ending at `last` (default: the last closed week), oldest first, from
    the partitions' first week at the earliest; and a note when that leaves fewer weeks than asked."""
    from engagement_dagster.defs.partitions import FIRST_WEEK_ENV, weekly_partitions

    if weeks < 1:
        raise UsageError(f"--weeks {weeks}: give 1 or more weeks")
    keys = weekly_partitions.get_partition_keys()
    first = weekly_partitions.get_first_partition_key()
    if not keys:
        raise UsageError(f"no week has closed yet since the partitions' first week, {first} ({FIRST_WEEK_ENV})")
    last = last or keys[-1]
    if last not in keys:
        raise UsageError(f"--week {last} is not a week of the partitions: a Monday (YYYY-MM-DD) from {keys[0]} "
                         f"({FIRST_WEEK_ENV}) to the last closed week, {keys[-1]}")
    end = keys.index(last) + 1
    chosen = keys[max(0, end - weeks):end]
    note = None
    if len(chosen) < weeks:
        note = (f"{weeks} weeks asked, {len(chosen)} run: the partitions start at {keys[0]}; set {FIRST_WEEK_ENV} "
                f"to an earlier Monday (for `make ui` too) for a longer history")
    return chosen, note


def step_seconds(result) -> dict[str, float]:
    """Wall seconds of each step (ingest, dbt features, training, scoring, dbt scoring)."""
    import dagster as dg

    entries = getattr(result, "entries", None)
    if entries is None:
        entries = dg.DagsterInstance.get().all_logs(result.run_id)
    starts, seconds = {}, {}
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            seconds[event.step_key] = entry.timestamp - starts[event.step_key]
    return seconds


def run(week: str | None, n_customers: int, source: str | None, seed: int, timings_json: str | None = None,
        weeks: int = 1) -> int:
    import dagster as dg

    import engagement_dagster.defs  # noqa: F401  (silences Dagster's Beta/Preview notes before anything loads)

    # Runs land in the instance `make ui` opens, whether or not DAGSTER_HOME was set; it gets its
    # dagster.yaml, so Dagster does not warn that there is none.
    from engagement_dagster.ui import instance_home

    instance_home()
    try:
        chosen, note = history(week, weeks)
    except UsageError as error:
        print(f"engagement-dagster run: {error}", file=sys.stderr)
        return 2
    config = {"n_customers": n_customers, "seed": seed, **({"source_uri": source} if source else {})}
    # The console gets the summary below, not Dagster's event stream: every event, stack traces
    # included, is in the run's log (make ui → Runs).
    run_config = {"ops": {"ingest__raw_customers": {"config": config}},
                  "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    tags = {"engagement/source": source or os.environ.get("ENGAGEMENT_SOURCE_URI") or "synthetic",
            **({} if source or os.environ.get("ENGAGEMENT_SOURCE_URI") else {"engagement/customers": str(n_customers)})}
    instance = dg.DagsterInstance.get()
    results: list[tuple[str, RunResult, float]] = []
    with WeeklyRefresh(instance) as refresh, _console() as console:
        # The definitions and their imports (~300,000 objects) live as long as the process: the cyclic
        # garbage collector need not walk them again at each full collection (~0.15 s a walk, ~0.5 s a run).
        gc.freeze()
        if len(chosen) == 1:
            backfill, runs = None, [refresh.create_run(chosen[0], run_config, tags)]
        else:
            backfill, runs = refresh.create_backfill(chosen, run_config, tags)
            print(f"history of {len(chosen)} weeks, {chosen[0]} to {chosen[-1]}, oldest first: backfill "
                  f"{backfill.backfill_id} of job {JOB} (make ui → Overview → Backfills)", file=console, flush=True)
        if note:
            print(f"  note: {note}", file=console, flush=True)
        interrupted = True
        try:
            for this_week, dagster_run in zip(chosen, runs, strict=True):
                if results and not results[-1][1].success:
                    why = f"week {results[-1][0]} failed, and each week is gated against the week before"
                    instance.report_run_canceled(dagster_run, message=f"Not run: {why}.")
                    print(f"  week {this_week}: not run (run canceled: {why})", file=console, flush=True)
                    continue
                started = time.perf_counter()
                result = refresh.execute(dagster_run)
                results.append((this_week, result, time.perf_counter() - started))
                if backfill is not None:
                    print(week_line(*results[-1]), file=console, flush=True)
            interrupted = False
        finally:
            if backfill is not None:
                _finish_backfill(instance, backfill, [r.run_id for r in runs], interrupted)
    last_week, result, elapsed = results[-1]
    steps = step_seconds(result)
    print(summary(result, last_week, elapsed, steps))
    if timings_json:
        with open(timings_json, "w") as handle:
            json.dump({"week": last_week, "customers": n_customers, "success": result.success,
                       "job_seconds": elapsed, "steps": steps,
                       "weeks": [{"week": w, "run_id": r.run_id, "success": r.success, "seconds": s}
                                 for w, r, s in results],
                       # ru_maxrss is in KiB on Linux. (dbt subprocesses are far smaller.)
                       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
                      handle, indent=2)
    return 0 if len(results) == len(chosen) and all(r.success for _, r, _ in results) else 1


@contextmanager
def _console():
    """The terminal, for this command's own lines, while whatever the steps print (dbt's log, above
    all) goes to the run's captured logs only (make ui → Runs → a step's stdout/stderr)."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    console = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield console
    finally:
        sys.stdout.flush()
        console.close()
        os.dup2(saved, 1)
        os.close(saved)


def _finish_backfill(instance: dg.DagsterInstance, backfill, run_ids: list[str], interrupted: bool) -> None:
    """Cancels the runs that never started (an interrupted history) and records how the backfill ended,
    as Dagster's backfill daemon does once every run of a job backfill has finished."""
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._time import get_current_timestamp

    statuses = []
    for run_id in run_ids:
        dagster_run = instance.get_run_by_id(run_id)
        if dagster_run.status == dg.DagsterRunStatus.NOT_STARTED:
            instance.report_run_canceled(dagster_run, message="Not run: the history was interrupted.")
            dagster_run = instance.get_run_by_id(run_id)
        statuses.append(dagster_run.status)
    if interrupted:
        status = BulkActionStatus.CANCELED
    elif all(status == dg.DagsterRunStatus.SUCCESS for status in statuses):
        status = BulkActionStatus.COMPLETED_SUCCESS
    else:
        status = BulkActionStatus.COMPLETED_FAILED
    current = instance.get_backfill(backfill.backfill_id) or backfill
    instance.update_backfill(current.with_status(status).with_end_timestamp(get_current_timestamp()))


def week_line(week: str, result, elapsed: float) -> str:
    """One line per week of a history: outcome, time, rows, models, checks, run id."""
    materialized = result.get_asset_materialization_events()
    rows = next((e.event_specific_data.materialization.metadata["dagster/row_count"].value for e in materialized
                 if e.asset_key.to_user_string() == "ingest/raw_customers"), None)
    models = [e.event_specific_data.materialization.metadata for e in materialized if e.asset_key.path[0] == "models"]
    promoted = sum(1 for meta in models if meta["promoted"].value)
    passed, failed, warned, skipped = _check_counts(result)
    return (f"  week {week}: {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f} s"
            + (f", {rows:,} customers" if rows is not None else "")
            + (f", models {promoted} promoted, {len(models) - promoted} not" if models else "")
            + f", checks {passed} passed, {failed} failed, {warned} warning(s), {skipped} skipped"
            + f"  (run {result.run_id[:8]})")


def _check_counts(result) -> tuple[int, int, int, int]:
    import dagster as dg

    checks = result.get_asset_check_evaluations()
    failed = [c for c in checks if not c.passed]
    warned = [c for c in failed if c.severity == dg.AssetCheckSeverity.WARN]
    skipped = sum(len(reasons) for reasons in skipped_checks(result).values())
    return len(checks) - len(failed), len(failed) - len(warned), len(warned), skipped


def skipped_checks(result) -> dict[str, dict[str, str]]:
    """Checks an asset did not run, with why: its materialization's `skipped_checks` metadata
    (asset → check → reason). The UI shows them as skipped."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if "skipped_checks" in mat.metadata:
            found[mat.asset_key.to_user_string()].update(mat.metadata["skipped_checks"].value)
    return dict(found)


def summary(result: RunResult | dg.ExecuteInProcessResult, week: str, elapsed: float,
            steps: dict[str, float]) -> str:
    import dagster as dg

    from engagement_dagster.core.ml.training import MODEL_KINDS
    materialized = result.get_asset_materialization_events()
    checks = result.get_asset_check_evaluations()
    failed = [c for c in checks if not c.passed]
    warned = [c for c in failed if c.severity == dg.AssetCheckSeverity.WARN]
    skipped = skipped_checks(result)
    skipped_lines = []
    for key, reasons in skipped.items():
        by_reason = defaultdict(list)
        for name, reason in reasons.items():
            by_reason[reason].append(name)
        skipped_lines += [f"\n    SKIPPED {key}:{', '.join(sorted(names))}: {reason}"
                          for reason, names in by_reason.items()]
    rows = {}
    for event in materialized:
        mat = event.event_specific_data.materialization
        count = mat.metadata.get("dagster/row_count")
        rows[mat.asset_key.to_user_string()] = count.value if count is not None else None
    rows.update(_dbt_row_counts([key for key, n in rows.items() if n is None], week))
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
        f"{len(warned)} warning(s), {sum(map(len, skipped.values()))} skipped"
        + "".join(f"\n    {'WARNING' if c.severity == dg.AssetCheckSeverity.WARN else 'FAILED'} "
                  f"{c.asset_key.to_user_string()}:{c.check_name}"
                  + (f": {c.description}" if c.description else "") for c in failed)
        + "".join(skipped_lines),
        *_refusals(result),
        *kb_lines,
        *(f"  {name + ':':<10} {where}" for name, where in where_things_are().items()),
        f"  run:       {result.run_id} (job {result.dagster_run.job_name}, partition {week})",
        "  UI:        make ui  → http://127.0.0.1:3000 (lineage, runs, checks)",
    ]
    return "\n".join(lines)


def _refusals(result: RunResult | dg.ExecuteInProcessResult) -> list[str]:
    """Why the run stopped, in one line per failed step (the stack trace stays in the run's log)."""
    lines = []
    for event in result.all_events:
        # A failed step, or a resource that could not start (the lake's writer lease held by another run).
        if event.event_type_value in ("STEP_FAILURE", "RESOURCE_INIT_FAILURE"):
            error = event.event_specific_data.error
            while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError",
                                                                 "DagsterResourceFunctionError"):
                error = error.cause
            # "package.module.ClassName: text" → "text"
            message = re.sub(rf"^[\w.]*{error.cls_name}: ", "", error.message.strip()).splitlines()[0]
            where = event.step_key or "the run's start"
            lines.append(f"  STOPPED at {where}: {message}")
    if lines:
        lines.append("  (the full trace is in the run's log: make ui → Runs)")
    return lines


def _dbt_row_counts(asset_keys: list[str], week: str) -> dict[str, int]:
    """Rows of the dbt tables for the week, read from the local DuckDB warehouse after the run (dbt's
    events carry no row counts, and counting on Athena would cost a query each). The marts keep every
    week: a table with a snapshot_week column is counted for this week only."""
    if environment() != "local" or not warehouse_path().exists():
        return {}
    from engagement_dagster.core.storage.warehouse import connect

    counts = {}
    with connect(warehouse_path()) as con:
        tables = {name for (name,) in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main'").fetchall()}
        weekly = {name for (name,) in con.execute(
            "select table_name from information_schema.columns where table_schema = 'main' "
            "and column_name = 'snapshot_week'").fetchall()}
        for key in asset_keys:
            name = key.split("/")[-1]
            if name in weekly:
                counts[key] = con.execute(f'select count(*) from main."{name}" where snapshot_week = ?',
                                          [dt.date.fromisoformat(week)]).fetchone()[0]
            elif name in tables:
                counts[key] = con.execute(f'select count(*) from main."{name}"').fetchone()[0]
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engagement-dagster")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the weekly refresh for a week, or a history of weeks (a backfill)")
    run_parser.add_argument("--week", help="snapshot week (a Monday, YYYY-MM-DD); default: the last closed week")
    run_parser.add_argument("--weeks", type=int, default=1,
                            help="weeks of history ending at --week, run oldest first as a backfill (default 1)")
    run_parser.add_argument("--customers", type=int, default=100_000, help="synthetic customers (default 100000)")
    run_parser.add_argument("--source", help="CSV/Parquet path or URI instead of the synthetic generator")
    run_parser.add_argument("--seed", type=int, default=42)
    run_parser.add_argument("--timings-json", help="write step timings to this file (used by `make bench`)")
    sub.add_parser("ask", add_help=False, help="ask the week's knowledge base a question (offline by default)")
    sub.add_parser("export-sfn", add_help=False,
                   help="write today's graph as a Step Functions state machine + weekly rule (deploy/step_functions/)")
    sub.add_parser("erase", add_help=False,
                   help="erase one customer from the lake, the warehouse, the knowledge base and the cache (--dry-run)")
    sub.add_parser("export-features", add_help=False,
                   help="regenerate the API's online features from the dbt models (--check: fail when stale)")
    # The scoring stage fanned out over machines (the Step Functions export runs these; no Dagster).
    fanout_commands = {
        "scoring-plan": ("plan_main", "pin the week's scoring (versions, shards, scored_at) and the Map's items"),
        "score-group": ("score_group_main", "score one group of shards of the week's plan and stage them"),
        "scoring-publish": ("publish_main", "check the staged shards of the week and publish them (or refuse)"),
    }
    for name, (_, text) in fanout_commands.items():
        sub.add_parser(name, add_help=False, help=text)
    serve_parser = sub.add_parser("serve", help="serve the prediction API with uvicorn (imports no Dagster)")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from engagement_dagster.api.serve import serve

        return serve(args.host, args.port)
    if args.command == "erase":
        from engagement_dagster.core.privacy.erase import erase_main

        return erase_main(rest)
    if args.command == "export-features":
        from engagement_dagster.export.online_features import main as export_features_main

        return export_features_main(rest)
    if args.command == "ask":
        from engagement_dagster.core.kb.ask import ask_main

        return ask_main(rest)
    if args.command in fanout_commands:
        from engagement_dagster.core.ml import fanout

        return getattr(fanout, fanout_commands[args.command][0])(rest)
    if args.command == "export-sfn":
        from engagement_dagster.export.step_functions import export_sfn_main

        return export_sfn_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run(args.week, args.customers, args.source, args.seed, args.timings_json, args.weeks)


def entry() -> None:
    """The `engagement-dagster` command. After a weekly run, whatever the run wrote is closed and
    flushed, and the exit handlers (temporary folders, logging) have run: the process then ends without
    the interpreter's teardown of the ~3,000 modules a run imports (torch, dbt, Dagster), which takes
    1–2 s and writes nothing."""
    code = main()
    if sys.argv[1:2] != ["run"]:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
