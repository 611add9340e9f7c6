"""Learning curve: each model's test metric against training rows, on the model-ready table a run left.

    python -m engagement_dagster.bench_learning_curve --warehouse .lake-bench/warehouse.duckdb \
        --rows 50000 100000 250000 500000 1000000 2000000 5000000 [--test-rows 1000000]
    (also: python -m engagement_dagster.bench --learning-curve …)

For each training-row count R, the R `train` rows of `main.customer_model_input` with the smallest
customer hash, `cast('0x' || substr(md5(customer_id), 1, 8) as bigint)` (the warehouse's own
`customer_hash` column where it has one), and the round(R × 15/70) `valid` rows with the smallest hash
likewise: a customer's membership depends on its id alone, never on the table's row order, and each
smaller sample is contained in every larger one. Ties of the 32-bit hash are broken by the id. The test
set is the same for every R: all test rows, or the --test-rows with the smallest hash (said in the
output). Each of the six models is trained as `train_models` trains it (`training.new_model`, then
`fit(train, valid)`: early stopping and calibration on valid) but alone, with every core, and scored
with its own `evaluate(test)`. Rows are read in SQL (ORDER BY hash LIMIT R per split), never the whole
table into pandas.

The table gives each model's primary metric per R, its fit seconds, and where the curve flattens: the
smallest R from which on the metric stays within 0.5% (relative) of the metric at the largest R, or
"not flattened" when only the largest R is that close.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from engagement_dagster.core.ml.feature_roles import MODEL_INPUT, FeatureRoles, read_roles
from engagement_dagster.core.settings import PROJECT_ROOT

HASH_COLUMN = "customer_hash"
VALID_PER_TRAIN = 15 / 70  # the model-ready table's split shares: 70 / 15 / 15
FLAT_TOLERANCE = 0.005  # relative
DEFAULT_TEST_ROWS = 1_000_000
DEFAULT_ROWS = (50_000, 100_000, 250_000, 500_000, 1_000_000, 2_000_000, 5_000_000)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def hash_expression(con: duckdb.DuckDBPyConnection, roles: FeatureRoles, table: str = MODEL_INPUT) -> str:
    """The SQL of a row's customer hash: the table's own column when it has one (same value)."""
    columns = {row[0] for row in con.execute(
        "select column_name from information_schema.columns where table_schema = 'main' and table_name = ?",
        [table]).fetchall()}
    if HASH_COLUMN in columns:
        return _quote(HASH_COLUMN)
    return f"cast('0x' || substr(md5(cast({_quote(roles.id)} as varchar)), 1, 8) as bigint)"


def model_columns(roles: FeatureRoles) -> list[str]:
    """What fitting and evaluating any of the six models reads: id, inputs, targets and the split."""
    return [roles.id, *roles.inputs, *roles.targets, roles.split]


def read_split(con: duckdb.DuckDBPyConnection, roles: FeatureRoles, split: str, limit: int | None,
               hash_sql: str, table: str = MODEL_INPUT) -> pd.DataFrame:
    """The `limit` rows of one split with the smallest customer hash (all of them when limit is None),
    in hash order, with a fresh index as `training.splits` gives."""
    columns = ", ".join(_quote(c) for c in model_columns(roles))
    sql = (f"select {columns} from main.{_quote(table)} where {_quote(roles.split)} = ? "
           f"order by {hash_sql}, {_quote(roles.id)}")
    params: list = [split]
    if limit is not None:
        sql += " limit ?"
        params.append(int(limit))
    return con.execute(sql, params).fetch_df().reset_index(drop=True)


def split_count(con: duckdb.DuckDBPyConnection, roles: FeatureRoles, split: str, table: str = MODEL_INPUT) -> int:
    return con.execute(f"select count(*) from main.{_quote(table)} where {_quote(roles.split)} = ?",
                       [split]).fetchone()[0]


def valid_rows_for(train_rows: int) -> int:
    return max(1, round(train_rows * VALID_PER_TRAIN))


def read_test(con: duckdb.DuckDBPyConnection, roles: FeatureRoles, test_rows: int | None, hash_sql: str,
              table: str = MODEL_INPUT) -> tuple[pd.DataFrame, str]:
    """The fixed test set and a sentence saying which it is."""
    available = split_count(con, roles, "test", table)
    if test_rows is None or available <= test_rows:
        return read_split(con, roles, "test", None, hash_sql, table), f"all {available:,} test rows"
    return (read_split(con, roles, "test", test_rows, hash_sql, table),
            f"the {test_rows:,} test rows with the smallest customer hash (of {available:,})")


def flattening_point(points: list[tuple[int, float]], tolerance: float = FLAT_TOLERANCE) -> int | None:
    """The smallest row count from which on every metric is within `tolerance` (relative) of the
    metric at the largest row count; None when only the largest is (the curve had not flattened
    within the rows measured). A single lucky small sample does not count as flat: every larger
    sample must stay within the band too."""
    points = sorted((r, m) for r, m in points if m is not None and math.isfinite(m))
    if len(points) < 2:
        return None
    final = points[-1][1]
    scale = max(abs(final), 1e-12)
    flat_from = points[-1][0]
    for rows, metric in reversed(points[:-1]):
        if abs(metric - final) / scale > tolerance:
            break
        flat_from = rows
    return None if flat_from == points[-1][0] else flat_from


def learning_curve(warehouse: Path, rows: list[int], roles: FeatureRoles, models: list[str],
                   test_rows: int | None = DEFAULT_TEST_ROWS) -> dict:
    from engagement_dagster.core.ml.training import MODEL_KINDS, new_model

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        hash_sql = hash_expression(con, roles)
        test, test_note = read_test(con, roles, test_rows, hash_sql)
        available = {"train": split_count(con, roles, "train"), "valid": split_count(con, roles, "valid")}
        print(f"learning curve: {test_note}; {available['train']:,} train and {available['valid']:,} valid rows "
              "available", file=sys.stderr, flush=True)
        curves: dict[str, list[dict]] = {name: [] for name in models}
        measured: list[int] = []
        for requested in sorted(set(rows)):
            train_n = min(requested, available["train"])
            if measured and train_n == measured[-1]:  # past the table's train rows: the same sample again
                print(f"learning curve: {requested:,} rows asked, only {train_n:,} train rows: skipped",
                      file=sys.stderr, flush=True)
                continue
            started = time.perf_counter()
            train = read_split(con, roles, "train", train_n, hash_sql)
            valid = read_split(con, roles, "valid", valid_rows_for(train_n), hash_sql)
            read_seconds = time.perf_counter() - started
            measured.append(train_n)
            for name in models:
                model = new_model(name, train, roles)
                started = time.perf_counter()
                model.fit(train, valid)
                fit_seconds = time.perf_counter() - started
                started = time.perf_counter()
                test_metrics = {k: float(v) for k, v in model.evaluate(test).items()}
                evaluate_seconds = time.perf_counter() - started
                primary = MODEL_KINDS[name].primary_metric
                curves[name].append({"requested_rows": requested, "train_rows": len(train), "valid_rows": len(valid),
                                     "metric": test_metrics[primary], "metrics": test_metrics,
                                     "fit_seconds": fit_seconds, "evaluate_seconds": evaluate_seconds,
                                     "read_seconds": read_seconds, "info": _plain(model.info)})
                print(f"learning curve: {len(train):,} train rows, {name}: {primary} {test_metrics[primary]:.4f}, "
                      f"fit {fit_seconds:.1f} s", file=sys.stderr, flush=True)
            del train, valid
    finally:
        con.close()
    result = {"warehouse": str(warehouse), "test_set": test_note, "test_rows": len(test),
              "tolerance": FLAT_TOLERANCE, "train_rows": measured, "models": {}}
    for name in models:
        kind = MODEL_KINDS[name]
        points = [(p["train_rows"], p["metric"]) for p in curves[name]]
        result["models"][name] = {"primary_metric": kind.primary_metric, "higher_is_better": kind.higher_is_better,
                                  "flattens_at": flattening_point(points), "points": curves[name]}
    return result


def _plain(value):
    """Model info (numpy scalars, dicts keyed by int) as JSON can hold it."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def report(result: dict) -> str:
    rows = result["train_rows"]
    head = ["model (primary metric)", *(f"{r:,}" for r in rows)]
    first = next(iter(result["models"].values()), {"points": []})["points"]
    valid = ", ".join(f"{p['valid_rows']:,}" for p in first)
    lines = [f"## learning curve — {result['warehouse']}", "",
             (f"test set: {result['test_set']}; valid rows (15/70 of train, smallest hashes): {valid}; "
              "each model fit alone on every core, early stopping on valid as in training."), "",
             "test metric by training rows:", "",
             "| " + " | ".join([*head, f"flattens at (within {result['tolerance']:.1%} of the largest)"]) + " |",
             "|" + "---|" * (len(head) + 1)]
    for name, curve in result["models"].items():
        by_rows = {p["train_rows"]: p for p in curve["points"]}
        arrow = "↑" if curve["higher_is_better"] else "↓"
        flat = curve["flattens_at"]
        cells = [f"{name} ({curve['primary_metric']} {arrow})",
                 *(f"{by_rows[r]['metric']:.4f}" if r in by_rows else "–" for r in rows),
                 f"{flat:,}" if flat is not None else f"not flattened by {rows[-1]:,}" if rows else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "fit seconds by training rows:", "", "| " + " | ".join(["model", *head[1:]]) + " |",
              "|" + "---|" * len(head)]
    for name, curve in result["models"].items():
        by_rows = {p["train_rows"]: p for p in curve["points"]}
        lines.append("| " + " | ".join([name, *(f"{by_rows[r]['fit_seconds']:.1f}" if r in by_rows else "–"
                                                for r in rows)]) + " |")
    return "\n".join(lines)


def _short(n: int) -> str:
    """2,000 → 2K, 2,500,000 → 2.5M: tick labels that fit a small panel."""
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


def plot(result: dict, path: Path) -> Path:
    """One panel per model: the primary test metric against training rows (log x), the band of
    ±tolerance around the largest sample's metric, and the flattening point."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed for a PNG
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(result["models"])
    columns = 3
    rows_of_panels = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.2 * columns, 3.4 * rows_of_panels), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        curve = result["models"][name]
        xs = [p["train_rows"] for p in curve["points"]]
        ys = [p["metric"] for p in curve["points"]]
        ax.plot(xs, ys, marker="o")
        if ys:
            final = ys[-1]
            band = abs(final) * result["tolerance"]
            ax.axhspan(final - band, final + band, color="green", alpha=0.12,
                       label=f"±{result['tolerance']:.1%} of the largest")
        if curve["flattens_at"] is not None:
            ax.axvline(curve["flattens_at"], linestyle=":", color="green", label=f"flat from {curve['flattens_at']:,}")
        ax.set_xscale("log")
        ax.set_xticks(xs, [_short(x) for x in xs], fontsize=7)  # the rows measured, not powers of ten
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{name}: {curve['primary_metric']} ({'higher' if curve['higher_is_better'] else 'lower'} "
                     "is better)", fontsize=9)
        ax.set_xlabel("training rows")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"learning curves — test set: {result['test_set']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _default_manifest() -> Path:
    """The manifest `make setup` builds, else the one `make bench` builds (the roles are the same)."""
    for target in ("target", "target-bench"):
        path = PROJECT_ROOT / "dbt_project" / target / "manifest.json"
        if path.exists():
            return path
    raise SystemExit("no dbt manifest: run `make setup` (or pass --manifest)")


def main(argv: list[str] | None = None) -> int:
    from engagement_dagster.core.ml.training import MODEL_KINDS

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    parser = argparse.ArgumentParser(prog="engagement-dagster-learning-curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, required=True, help="DuckDB file a run built (warehouse.duckdb)")
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS), help="training-row counts")
    parser.add_argument("--test-rows", type=int, default=DEFAULT_TEST_ROWS,
                        help="cap of the fixed test set (the smallest hashes); 0: every test row")
    parser.add_argument("--models", nargs="+", choices=list(MODEL_KINDS), default=list(MODEL_KINDS))
    parser.add_argument("--manifest", type=Path, help="dbt manifest the column roles are read from")
    parser.add_argument("--json-out", type=Path, help="default .bench-data/learning-curve-<UTC timestamp>.json")
    parser.add_argument("--plot", type=Path, help="PNG, one panel per model (default docs/img/learning_curve.png)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if not args.warehouse.exists():
        raise SystemExit(f"{args.warehouse}: no such warehouse (a run's lake keeps it: bench --keep-lake)")
    roles = read_roles(args.manifest or _default_manifest())
    result = learning_curve(args.warehouse, args.rows, roles, args.models, args.test_rows or None)
    print(report(result), "\n", flush=True)
    json_path = args.json_out or PROJECT_ROOT / ".bench-data" / f"learning-curve-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=float))
    print(f"results: {json_path}")
    if not args.no_plot:
        print(f"plot: {plot(result, args.plot or PROJECT_ROOT / 'docs/img/learning_curve.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
