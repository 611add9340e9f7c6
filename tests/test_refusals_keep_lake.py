"""Issue 13, item 5, "Bad input never loses data": for every refusal (the data contract, a blocking
check, the promotion gate), the previous week's and the same week's earlier good outputs stay as they
were.

Each test starts from a copy of the `kb_weeks` lake (two good weeks, 2026-11-09 and 2026-11-16, of the
whole graph), fingerprints it, triggers one refusal through the real Dagster graph (or the real CLI),
fingerprints it again and compares. A fingerprint is the sha256 of every file under the lake root,
except the DuckDB warehouse file, whose bytes change whenever it is opened: for it, the content of
every table and view (its columns and its rows in order, ORDER BY ALL), whole and week by week.

Refusals are tried on the week that already has good outputs (2026-11-16) and on a new week
(2026-11-23), whose previous week must stay as it was.

A blocking check of ingest/raw_customers is judged on the staged snapshot, before it is published: a
refused week leaves the lake exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest

from engagement_dagster.core.data import snapshot
from engagement_dagster.core.ml import scoring
from engagement_dagster.core.ml.registry import COMMITS_PREFIX
from engagement_dagster.core.settings import PROJECT_ROOT, lake_dir, warehouse_path
from engagement_dagster.definitions import defs
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.models.assets import MODEL_KEYS
from engagement_dagster.defs.resources import build_resources
from tests.conftest import KB_CUSTOMERS, KB_WEEKS
from tests.seed_export import write_seed_export

WEEK = KB_WEEKS[-1]  # the lake's last good week: a refusal of it must keep its outputs
NEW_WEEK = "2026-11-23"  # the week after: a refusal of it must keep the previous weeks'
# The new week closes on 2026-11-30 06:00 UTC; Dagster refuses a partition key that has not closed on its
# clock, so every run here reads the partitions as of a moment after that close.
AFTER_NEW_WEEK_CLOSED = dt.datetime(2026, 11, 30, 7, tzinfo=dt.UTC)
INGEST_STEP = "ingest__raw_customers"
TRAINING_STEP = "train_models"
# The anomaly model's gate is a band around the target flag rate, which the tolerance does not move: a
# very negative tolerance refuses every other challenger.
METRIC_GATED = set(MODEL_KEYS) - {"anomaly_model"}


# --- The fingerprint -----------------------------------------------------------------------------------

@dataclass
class Fingerprint:
    files: dict[str, str]  # path relative to the lake root -> sha256
    relations: dict[str, str]  # "schema.name" -> sha256 of its kind, view SQL, columns and sorted rows
    weeks: dict[str, dict[str, str]]  # relation with a snapshot_week column -> week -> sha256 of its rows


@dataclass
class Diff:
    added: set[str]
    removed: set[str]
    changed: set[str]
    relations: set[str]  # relations whose content differs (or that appeared or disappeared)

    def files(self) -> set[str]:
        return self.added | self.removed | self.changed


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def fingerprint(root: Path) -> Fingerprint:
    warehouse = warehouse_path()
    assert warehouse.parent == root == lake_dir(), "the fingerprint must read the lake the runs wrote"
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(root.rglob("*"))
             if p.is_file() and p.name not in (warehouse.name, warehouse.name + ".wal")}
    relations, weeks = {}, {}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        con.execute(f"set file_search_path = '{root}'")  # a view over the raw files names them relative to the lake
        views = dict(con.execute("select schema_name || '.' || view_name, sql from duckdb_views() "
                                 "where not internal").fetchall())
        for schema, name, kind in con.execute("select table_schema, table_name, table_type "
                                              "from information_schema.tables order by all").fetchall():
            relation = con.sql(f'select * from "{schema}"."{name}" order by all')
            columns, rows = relation.columns, relation.fetchall()
            key = f"{schema}.{name}"
            relations[key] = _digest((kind, views.get(key), columns, rows))
            if "snapshot_week" in columns:
                by_week = defaultdict(list)
                at = columns.index("snapshot_week")
                for row in rows:
                    by_week[str(row[at])].append(row)
                weeks[key] = {week: _digest(week_rows) for week, week_rows in by_week.items()}
    return Fingerprint(files, relations, weeks)


def diff(before: Fingerprint, after: Fingerprint) -> Diff:
    return Diff(added=set(after.files) - set(before.files), removed=set(before.files) - set(after.files),
                changed={p for p in before.files.keys() & after.files.keys() if before.files[p] != after.files[p]},
                relations={r for r in before.relations.keys() | after.relations.keys()
                           if before.relations.get(r) != after.relations.get(r)})


def dbt_relations(tag: str) -> set[str]:
    """The warehouse relations of the dbt models of one group (`features` or `scoring`: the marts)."""
    manifest = json.loads(Path(engagement_dbt.manifest_path).read_text())
    return {f"{node['schema']}.{node['alias']}" for node in manifest["nodes"].values()
            if node["resource_type"] == "model" and tag in node["tags"]}


def is_dbt_test_failure_table(relation: str) -> bool:
    # Failing rows that `dbt test --store-failures` keeps: rebuilt by every dbt step's tests.
    return relation.split(".")[0].endswith("dbt_test__audit")


# --- Running the graph ---------------------------------------------------------------------------------

@pytest.fixture
def lake_copy(kb_weeks, tmp_path, monkeypatch) -> Path:
    """A private copy of the two good weeks (kb_weeks is shared: never written here), as the lake."""
    root = tmp_path / "lake"
    shutil.copytree(kb_weeks[0], root)
    monkeypatch.setenv("ENGAGEMENT_LAKE_DIR", str(root))
    monkeypatch.setenv("ENGAGEMENT_ENV", "local")
    monkeypatch.delenv("ENGAGEMENT_SOURCE_URI", raising=False)
    return root


def run(week: str, selection: dg.AssetSelection | None = None, source: Path | None = None,
        promotion_tolerance: float | None = None) -> dg.ExecuteInProcessResult:
    """The weekly refresh (or a job's selection of it) in this process, as kb_weeks built the lake; the
    synthetic customers of kb_weeks unless a source file is given."""
    ops = {}
    if selection is None:
        ingest = {"source_uri": str(source)} if source else {"n_customers": KB_CUSTOMERS}
        ops[INGEST_STEP] = {"config": ingest}
    if promotion_tolerance is not None:
        ops[TRAINING_STEP] = {"config": {"promotion_tolerance": promotion_tolerance}}
    with dg.partition_loading_context(effective_dt=AFTER_NEW_WEEK_CLOSED):
        return dg.materialize(defs.assets, partition_key=week, resources=build_resources("local"),
                              selection=selection, raise_on_error=False,
                              run_config={"ops": ops} if ops else None)


TRAINING_JOB = dg.AssetSelection.groups("models")  # definitions.training_job's selection
SCORING_JOB = dg.AssetSelection.groups("scoring")  # definitions.scoring_job's: predictions, then the marts


def step_failures(result) -> dict[str, str]:
    return {e.step_key: str(e.event_specific_data.error) for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"}


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def failed_checks(result) -> dict[str, set[str]]:
    failed = defaultdict(set)
    for check in result.get_asset_check_evaluations():
        if not check.passed:
            failed[check.asset_key.to_user_string()].add(check.check_name)
    return dict(failed)


def ingest_outputs(week: str) -> set[str]:
    """What ingest/raw_customers writes for a week (defs/ingest/assets.py)."""
    return {snapshot.raw_key(week), snapshot.profile_key(week), snapshot.oracle_key(week)}


def seed_file(path: Path, rows: int = KB_CUSTOMERS, change=None) -> Path:
    """A week's customers in the seed platform's export format, optionally spoilt by `change`."""
    frame = write_seed_export(path, rows, seed=3)
    if change is not None:
        change(frame).to_csv(path, index=False)
    return path


# --- The fingerprint can fail --------------------------------------------------------------------------

def test_the_fingerprint_sees_a_changed_byte_a_new_file_and_a_changed_row(lake_copy):
    before = fingerprint(lake_copy)
    assert diff(before, fingerprint(lake_copy)) == Diff(set(), set(), set(), set())  # stable on an unchanged lake
    assert len(before.files) > 50 and dbt_relations("scoring") <= set(before.relations)

    shard = sorted(lake_copy.glob(f"{scoring.PREDICTIONS_PREFIX}/snapshot_week={WEEK}/*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    (lake_copy / "models" / "stray.json").write_text("{}")
    with duckdb.connect(str(warehouse_path())) as con:  # one value of one row of one mart
        con.execute("update main.at_risk_customers set churn_probability = churn_probability + 1e-9 "
                    "where customer_id = (select min(customer_id) from main.at_risk_customers)")
    after = fingerprint(lake_copy)
    assert diff(before, after) == Diff(added={"models/stray.json"}, removed=set(),
                                       changed={str(shard.relative_to(lake_copy))},
                                       relations={"main.at_risk_customers"})
    changed_weeks = {w for w, d in after.weeks["main.at_risk_customers"].items()
                     if before.weeks["main.at_risk_customers"][w] != d}
    assert len(changed_weeks) == 1

    shard.unlink()
    assert diff(before, fingerprint(lake_copy)).removed == {str(shard.relative_to(lake_copy))}


# --- 1. The data contract ------------------------------------------------------------------------------

def _out_of_range(frame):
    frame.loc[5, "age"] = 400
    return frame


def _wrong_type(frame):
    frame["tenure_months"] = frame["tenure_months"].astype(object)
    frame.loc[7, "tenure_months"] = "twelve"
    return frame


def _missing_column(frame):
    return frame.drop(columns=["tenure_months"])


def _repeated_customer(frame):
    frame.loc[2_900, "customer_id"] = frame.loc[0, "customer_id"]
    return frame


CONTRACT_BREACHES = {"value_out_of_range": (_out_of_range, "age"), "wrong_type": (_wrong_type, "tenure_months"),
                     "missing_column": (_missing_column, "tenure_months"),
                     "repeated_customer_id": (_repeated_customer, "customer_id")}


@pytest.mark.parametrize("week", [WEEK, NEW_WEEK])
@pytest.mark.parametrize("breach", CONTRACT_BREACHES)
def test_a_file_the_contract_refuses_changes_nothing(lake_copy, tmp_path, week, breach):
    change, column = CONTRACT_BREACHES[breach]
    bad = seed_file(tmp_path / f"{breach}.csv", change=change)
    before = fingerprint(lake_copy)
    result = run(week, source=bad)
    assert not result.success
    failures = step_failures(result)
    assert list(failures) == [INGEST_STEP] and "ContractViolation" in failures[INGEST_STEP]
    assert str(bad) in failures[INGEST_STEP] and f"'{column}'" in failures[INGEST_STEP]
    assert materialized(result) == set()
    assert diff(before, fingerprint(lake_copy)) == Diff(set(), set(), set(), set())


def test_the_cli_refusing_a_file_changes_nothing(lake_copy, tmp_path):
    """How a user meets it: `engagement-dagster run --week W --source FILE`, in its own process."""
    bad = seed_file(tmp_path / "customers.csv", change=_out_of_range)
    before = fingerprint(lake_copy)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "ENGAGEMENT_LAKE_DIR": str(lake_copy),
           "ENGAGEMENT_ENV": "local", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    for name in ("ENGAGEMENT_FIRST_WEEK", "ENGAGEMENT_SOURCE_URI", "DAGSTER_CODE_LOCATION_NAME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "engagement_dagster.cli", "run", "--week", WEEK, "--source", str(bad)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"STOPPED at {INGEST_STEP}: {bad}: column 'age'" in done.stdout
    assert diff(before, fingerprint(lake_copy)) == Diff(set(), set(), set(), set())


# --- 2. A blocking check of ingest/raw_customers -------------------------------------------------------
# The contract already refuses repeated ids, missing values and values out of range, so of the blocking
# checks only `row_count_change` can fail on a file the contract takes: a third of last week's customers.

def refuse_a_collapsed_row_count(lake: Path, tmp_path: Path, week: str) -> tuple[Fingerprint, Fingerprint]:
    """Runs the weekly refresh on a valid file with a third of the customers; the fingerprints around it.
    The run must have been stopped by that check."""
    small = seed_file(tmp_path / "a_third.csv", rows=KB_CUSTOMERS // 3)
    before = fingerprint(lake)
    result = run(week, source=small)
    if result.success or failed_checks(result).get("ingest/raw_customers", set()) - {"distribution_drift"} != {
            "row_count_change"} or set(step_failures(result)) != {INGEST_STEP}:
        pytest.fail(f"expected the row_count_change check to stop the run: {failed_checks(result)}, "
                    f"{step_failures(result)}")
    return before, fingerprint(lake)


@pytest.mark.parametrize("week", [WEEK, NEW_WEEK])
def test_a_failed_ingest_check_changes_nothing(lake_copy, tmp_path, week):
    before, after = refuse_a_collapsed_row_count(lake_copy, tmp_path, week)
    assert diff(before, after) == Diff(set(), set(), set(), set())


# --- 3. A blocking check of scoring/customer_predictions -----------------------------------------------

def _probability_out_of_range(predictions):
    predictions.loc[predictions.index[0], "churn_probability"] = 1.5
    return predictions


def _customer_dropped(predictions):
    return predictions.iloc[:-1]


def _prediction_missing(predictions):
    predictions.loc[predictions.index[0], "predicted_lifetime_value_usd"] = np.nan
    return predictions


SCORING_FAULTS = {"probability_out_of_range": (_probability_out_of_range, "probabilities_in_range"),
                  "customer_dropped": (_customer_dropped, "one_row_per_customer"),
                  "prediction_missing": (_prediction_missing, "no_null_predictions")}


def spoil_scoring(monkeypatch, fault: str) -> str:
    """The plain scoring function returns spoilt predictions (the run is in this process); the check
    that must refuse them."""
    change, check = SCORING_FAULTS[fault]
    score = scoring.score
    monkeypatch.setattr(scoring, "score", lambda frame, champions: change(score(frame, champions)))
    return check


def assert_predictions_refused(result, check: str) -> None:
    assert not result.success
    assert failed_checks(result).get("scoring/customer_predictions") == {check}
    assert set(step_failures(result)) == {"scoring__customer_predictions"}
    assert not any(key.startswith(("scoring/", "knowledge_base/")) for key in materialized(result))


@pytest.mark.parametrize("fault", SCORING_FAULTS)
def test_a_failed_prediction_check_of_the_scoring_job_changes_nothing(lake_copy, monkeypatch, fault):
    """The scoring job alone (nothing upstream runs): the week's prediction shards, the marts and
    everything else stay as they were."""
    check = spoil_scoring(monkeypatch, fault)
    before = fingerprint(lake_copy)
    result = run(WEEK, selection=SCORING_JOB)
    assert_predictions_refused(result, check)
    assert diff(before, fingerprint(lake_copy)) == Diff(set(), set(), set(), set())


@pytest.mark.parametrize("week", [WEEK, NEW_WEEK])
def test_a_failed_prediction_check_in_a_weekly_refresh_keeps_earlier_outputs(lake_copy, monkeypatch, week):
    """The whole weekly refresh: ingest, the dbt features and training succeed before scoring refuses.

    The rule: a file or relation may differ only if it is an output of a stage that succeeded in this run:
    - ingest: the week's raw snapshot, its profile and its generator truth (ingest_outputs);
    - dbt features: the feature relations (stg_customers, customer_features, customer_model_input) and
      dbt's stored test failures;
    - training: new version directories and commit records under models/, every model's baseline.json
      (each training rewrites it), and champion.json of the models whose promotion_gate passed this run.
    Everything else stays byte for byte or row for row: in particular every prediction shard (no shard of
    the week added, changed or removed), every mart and the knowledge base."""
    check = spoil_scoring(monkeypatch, "probability_out_of_range")
    before = fingerprint(lake_copy)
    result = run(week)
    assert_predictions_refused(result, check)
    assert {"ingest/raw_customers", "features/customer_model_input",
            *(key.to_user_string() for key in MODEL_KEYS.values())} <= materialized(result)
    after = fingerprint(lake_copy)
    changes = diff(before, after)
    promoted = {name for name, key in MODEL_KEYS.items()
                if "promotion_gate" not in failed_checks(result).get(key.to_user_string(), set())}
    new_versions = {"/".join(p.split("/")[:3]) for p in changes.added
                    if p.startswith("models/") and not p.startswith(COMMITS_PREFIX)}

    def training_output(path: str) -> bool:
        parts = path.split("/")
        if parts[0] != "models":
            return False
        if path.startswith(COMMITS_PREFIX):
            return path not in before.files
        if len(parts) == 3:
            return parts[2] == "baseline.json" or (parts[2] == "champion.json" and parts[1] in promoted)
        return "/".join(parts[:3]) in new_versions and not any(p.startswith("/".join(parts[:3]) + "/")
                                                                for p in before.files)

    assert changes.removed == set()
    assert {p for p in changes.added | changes.changed
            if p not in ingest_outputs(week) and not training_output(p)} == set()
    assert len(new_versions) == len(MODEL_KEYS)  # training did run: one new version per model
    assert not any(p.startswith(f"{scoring.PREDICTIONS_PREFIX}/") for p in changes.files())
    assert not any(p.startswith("kb/") for p in changes.files())
    features = dbt_relations("features")
    assert {r for r in changes.relations if r not in features and not is_dbt_test_failure_table(r)} == set()
    for mart in dbt_relations("scoring"):  # said above; named here, as what the refusal protects
        assert after.relations[mart] == before.relations[mart], mart


# --- 4. The promotion gate -----------------------------------------------------------------------------

def champions(lake: Path) -> dict[str, str]:
    return {name: json.loads((lake / "models" / name / "champion.json").read_text())["version"]
            for name in MODEL_KEYS}


def check_refused_challengers(lake: Path, result, before: Fingerprint, old: dict[str, str]) -> tuple[Diff, set[str]]:
    """Champions, earlier versions and the rest of the registry unchanged; the refused challengers recorded
    as new versions, each complete, in one commit. Returns the diff and the models promoted."""
    assert TRAINING_STEP not in step_failures(result)
    gates = {c.asset_key.path[-1]: c.passed for c in result.get_asset_check_evaluations()
             if c.check_name == "promotion_gate"}
    assert set(gates) == set(MODEL_KEYS)
    refused = {name for name, passed in gates.items() if not passed}
    assert refused >= METRIC_GATED
    promoted = set(MODEL_KEYS) - refused
    after = fingerprint(lake)
    changes = diff(before, after)
    now = champions(lake)
    for name in refused:
        assert now[name] == old[name] and f"models/{name}/champion.json" not in changes.changed, name
    for name in promoted:  # not a refusal: the anomaly model's flag rate stayed in its band
        assert now[name] != old[name] and f"models/{name}/champion.json" in changes.changed, name
    assert changes.removed == set()
    registry_changes = {p for p in changes.changed if p.startswith("models/")}
    assert registry_changes <= ({f"models/{name}/baseline.json" for name in MODEL_KEYS}
                                | {f"models/{name}/champion.json" for name in promoted})
    # Exactly one new version per model (the refused challengers kept for the audit), with the files its
    # version.json lists, and one commit record with its commit point; nothing else in the registry.
    added = {p for p in changes.added if p.startswith("models/")}
    (record_key,) = {p for p in added if p.startswith(COMMITS_PREFIX) and p.endswith(".json")}
    record = json.loads((lake / record_key).read_text())
    expected = {record_key, record_key.removesuffix(".json") + ".done"}
    assert set(record["versions"]) == set(MODEL_KEYS) and set(record["champions"]) == promoted
    for name, meta in record["versions"].items():
        assert meta["version"] not in old.values() and not any(
            p.startswith(f"models/{name}/{meta['version']}/") for p in before.files)
        expected |= {f"models/{name}/{meta['version']}/{f}" for f in [*meta["files"], "version.json"]}
    assert added == expected
    return changes, promoted


def test_a_refused_challenger_keeps_the_champions_and_earlier_versions(lake_copy):
    """The training job for the week already trained, with a gate no challenger can pass."""
    before, old = fingerprint(lake_copy), champions(lake_copy)
    result = run(WEEK, selection=TRAINING_JOB, promotion_tolerance=-0.99)
    assert result.success  # a refused challenger is a warning, never a stop
    changes, _ = check_refused_challengers(lake_copy, result, before, old)
    assert {p for p in changes.files() if not p.startswith("models/")} == set()
    assert changes.relations == set()


def test_a_weekly_refresh_with_refused_challengers_scores_with_the_old_champions(lake_copy):
    """A new week's whole refresh with a gate no metric-gated challenger passes: the earlier weeks' files
    and rows stay, the registry changes only as above, and the week is scored by the kept champions."""
    before, old = fingerprint(lake_copy), champions(lake_copy)
    result = run(NEW_WEEK, promotion_tolerance=-0.99)
    assert result.success
    changes, promoted = check_refused_challengers(lake_copy, result, before, old)
    outside_registry = {p for p in changes.files() if not p.startswith("models/")}
    assert all(f"snapshot_week={NEW_WEEK}" in p for p in outside_registry), outside_registry
    assert {p for p in changes.changed if not p.startswith("models/")} == set()
    after, features = fingerprint(lake_copy), dbt_relations("features")
    for relation, weeks in before.weeks.items():  # earlier weeks' rows of every table that keeps weeks
        for week in KB_WEEKS:
            if week in weeks and relation not in features:
                assert after.weeks[relation].get(week) == weeks[week], (relation, week)
    predictions = pd.concat(pd.read_parquet(p) for p in
                            sorted(lake_copy.glob(f"{scoring.PREDICTIONS_PREFIX}/snapshot_week={NEW_WEEK}/*.parquet")))
    assert len(predictions) == KB_CUSTOMERS
    for name in MODEL_KEYS:
        column = f"{name}_version"
        assert column in scoring.VERSION_COLUMNS
        expected = champions(lake_copy)[name] if name in promoted else old[name]
        assert set(predictions[column]) == {expected}, name
