"""Feature drift: the PSI arithmetic against hand-computed values, and the `feature_drift` check on
`features/customer_model_input` in a real Dagster run over a temporary DuckDB warehouse and lake.

The warehouse table is written by a stand-in for the dbt asset (same key, same columns as the dbt
manifest declares), so a week can be shifted on purpose: the check must warn on it and stay quiet on
an unshifted week drawn from the same distribution."""

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from engagement_dagster.core.ml import drift
from engagement_dagster.core.ml.feature_roles import MODEL_INPUT, read_roles
from engagement_dagster.core.storage.warehouse import connect
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.features.drift import MODEL_INPUT_KEY, feature_drift, reference_key
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources.lake import LocalLake
from engagement_dagster.defs.resources.warehouse import DuckDBWarehouse

EPS = drift.EPSILON


# ------------------------------------------------------------------ PSI, by hand


def test_psi_of_two_categories_by_hand():
    # 0.2·ln(0.7/0.5) + (−0.2)·ln(0.3/0.5) = 0.2·0.336472 + 0.2·0.510826
    assert drift.psi([0.5, 0.5], [0.7, 0.3]) == pytest.approx(0.169459572, abs=1e-9)
    assert drift.psi([0.25] * 4, [0.25] * 4) == 0.0


def test_an_empty_bin_counts_as_epsilon():
    # bin 2 empty this week: 0.5·ln(2) + (ε − 0.5)·ln(ε/0.5), ε = 1e-4
    assert drift.psi([0.5, 0.5], [1.0, 0.0]) == pytest.approx(4.604318467, abs=1e-8)
    assert math.isfinite(drift.psi([0.0, 1.0], [1.0, 0.0]))


def test_numeric_bins_are_the_previous_weeks_deciles():
    previous = pd.Series(np.arange(100, dtype=float))
    edges = drift.decile_edges(previous)
    assert edges == [9.0, 19.0, 29.0, 39.0, 49.0, 59.0, 69.0, 79.0, 89.0]  # (−∞, 9], (9, 19], …, (89, ∞)
    assert drift.binned_shares(previous, edges) == pytest.approx([0.1] * 10 + [0.0])
    # 30 values in the first decile, 10 in each of the next seven, none in the last two:
    # 0.2·ln(0.3/0.1) + 2·(ε − 0.1)·ln(ε/0.1)
    current = pd.Series([*range(10)] * 3 + list(range(10, 80)), dtype=float)
    report = drift.population_stability(pd.DataFrame({"x": previous}), pd.DataFrame({"x": current}), ["x"], [])
    assert report.psi["x"] == pytest.approx(1.599891962, abs=1e-8)


def test_missing_values_are_a_bin_of_their_own():
    previous = pd.DataFrame({"x": np.arange(100, dtype=float)})
    current = pd.DataFrame({"x": [*range(90), *[None] * 10]}, dtype=float)
    # the last decile empties (0.1 → ε) and 10% go missing (0 → 0.1): 2·(0.1 − ε)·ln(0.1/ε)
    assert drift.population_stability(previous, current, ["x"], []).psi["x"] == pytest.approx(1.380169506, abs=1e-8)


def test_tied_values_merge_their_deciles():
    flag = pd.Series([0] * 80 + [1] * 20)
    assert drift.decile_edges(flag) == [0.0, 1.0]
    assert drift.binned_shares(flag, [0.0, 1.0]) == pytest.approx([0.8, 0.2, 0.0, 0.0])
    # 80/20 → 50/50: (0.5 − 0.8)·ln(0.5/0.8) + (0.5 − 0.2)·ln(0.5/0.2)
    expected = -0.3 * math.log(0.625) + 0.3 * math.log(2.5)
    report = drift.population_stability(pd.DataFrame({"f": flag}), pd.DataFrame({"f": [0, 1] * 50}), ["f"], [])
    assert report.psi["f"] == pytest.approx(expected, abs=1e-9)


def test_categorical_features_compare_category_shares():
    previous = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 50})
    shifted = pd.DataFrame({"c": ["a"] * 70 + ["b"] * 30})
    assert drift.population_stability(previous, shifted, [], ["c"]).psi["c"] == pytest.approx(0.169459572, abs=1e-9)
    # a category new this week: (0.1 − ε)·ln(0.1/ε) + (0.45 − 0.5)·ln(0.45/0.5)·2
    new = pd.DataFrame({"c": ["a"] * 45 + ["b"] * 45 + ["z"] * 10})
    expected = (0.1 - EPS) * math.log(0.1 / EPS) + 2 * (-0.05) * math.log(0.9)
    assert drift.population_stability(previous, new, [], ["c"]).psi["c"] == pytest.approx(expected, abs=1e-9)


def test_the_report_orders_features_and_the_reference_survives_json():
    rng = np.random.default_rng(0)
    previous = pd.DataFrame({"steady": rng.normal(size=5000), "moved": rng.normal(size=5000),
                             "kind": rng.choice(["a", "b", "c"], size=5000)})
    current = pd.DataFrame({"steady": rng.normal(size=5000), "moved": rng.normal(1.0, 1.0, size=5000),
                            "kind": rng.choice(["a", "b", "c"], size=5000)})
    ref = drift.reference(previous, "2026-11-09", ["steady", "moved"], ["kind"])
    assert drift.Reference.from_json(ref.to_json()) == ref
    report = drift.compare(drift.Reference.from_json(ref.to_json()), current, "2026-11-16")
    assert next(iter(report.psi)) == "moved" and report.psi["moved"] > 0.2
    assert report.psi["steady"] < 0.02 and report.psi["kind"] < 0.02
    assert set(report.drifting) == {"moved"} and report.reference_week == "2026-11-09"
    assert "1 of 3 feature(s) drifted" in drift.describe(report) and "moved" in drift.describe(report)
    gone = drift.compare(ref, current.drop(columns=["kind"]), "2026-11-16")
    assert gone.missing_features == ("kind",) and "kind" not in gone.psi


# ------------------------------------------------------------------ the check in a Dagster run

ROLES = read_roles(engagement_dbt.manifest_path)
WEEK_1, WEEK_2 = "2026-11-09", "2026-11-16"
ROWS = 3_000
SHIFTED = ("sessions_last_7_days", "log_revenue_90d", "trust_score")  # numeric features moved on purpose
SHIFTED_CATEGORY = "platform"


def model_input(week: str, seed: int, shift: bool = False) -> pd.DataFrame:
    """A week of customer_model_input with the model's real columns (from the dbt manifest), drawn
    from one fixed distribution; `shift` moves three numeric features and one categorical's shares."""
    rng = np.random.default_rng(seed)
    frame = {ROLES.id: [f"c{seed}-{i:05d}" for i in range(ROWS)], "snapshot_week": pd.Timestamp(week),
             "gender": rng.choice(list("MFON"), ROWS), "age_band": rng.choice(["18-24", "25-34", "35-44"], ROWS)}
    for i, name in enumerate(ROLES.features):
        if i % 3 == 0:  # counts, heavy ties
            frame[name] = rng.poisson(3 + i % 5, ROWS).astype("int64")
        elif i % 3 == 1:
            frame[name] = rng.lognormal(1.0, 0.5, ROWS)
        else:
            frame[name] = rng.uniform(0, 1, ROWS)
    for name in ROLES.categoricals:
        frame[name] = rng.choice(["ios", "android", "web", "unknown"], ROWS, p=[0.4, 0.4, 0.15, 0.05])
    for name in ROLES.targets:
        frame[name] = rng.uniform(0, 1, ROWS)
    frame[ROLES.split] = rng.choice(["train", "valid", "test"], ROWS)
    frame[ROLES.key] = rng.integers(0, 2**32, ROWS)
    frame = pd.DataFrame(frame)
    if shift:
        for name in SHIFTED:
            frame[name] = frame[name] + 0.6 * frame[name].std()  # 0.6 standard deviations
        frame[SHIFTED_CATEGORY] = rng.choice(["ios", "android", "web", "unknown"], ROWS, p=[0.2, 0.3, 0.3, 0.2])
    return frame


@pytest.fixture
def run_week(tmp_path):
    """Materialize a week through a stand-in for the dbt asset (writes the table into a temporary
    DuckDB warehouse) and run the real `feature_drift` check after it."""
    path = tmp_path / "warehouse.duckdb"
    lake = LocalLake(root=str(tmp_path / "lake"))
    frames: dict[str, pd.DataFrame] = {}

    @dg.asset(key=MODEL_INPUT_KEY, partitions_def=weekly_partitions)
    def customer_model_input(context: dg.AssetExecutionContext) -> None:
        frame = frames[context.partition_key]
        with connect(path, read_only=False) as con:
            con.register("week_frame", frame)
            con.execute(f"create or replace table main.{MODEL_INPUT} as select * from week_frame")

    resources = {"warehouse": DuckDBWarehouse(path=str(path)), "lake": lake}

    def run(week: str | None, frame: pd.DataFrame):
        """A week's run (the stand-in writes `frame`, then the check), or with no week the check alone."""
        if week is None:
            result = dg.materialize([customer_model_input, feature_drift], resources=resources,
                                    selection=dg.AssetSelection.checks(feature_drift))
        else:
            frames[week] = frame
            result = dg.materialize([customer_model_input, feature_drift], partition_key=week, resources=resources)
        assert result.success  # a warning never fails the run
        evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == "feature_drift"]
        observations = [e.event_specific_data.asset_observation for e in result.all_events
                        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
        return evaluations, observations

    run.lake = lake
    return run


def skipped_reason(observations) -> str:
    (obs,) = observations
    assert obs.asset_key == MODEL_INPUT_KEY
    return obs.metadata["skipped_checks"].value["feature_drift"]


def test_drift_fires_on_a_shifted_week_and_not_on_an_unshifted_one(run_week):
    evaluations, observations = run_week(WEEK_1, model_input(WEEK_1, seed=1))
    assert evaluations == []  # skipped: nothing to compare with yet
    assert "no reference of the previous week, 2026-11-02" in skipped_reason(observations)
    assert run_week.lake.exists(reference_key(WEEK_1))  # what next week compares with

    (same,), _ = run_week(WEEK_2, model_input(WEEK_2, seed=2))
    assert same.passed, same.description
    assert same.severity == dg.AssetCheckSeverity.WARN
    assert same.metadata["max_psi"].value < 0.05  # 3,000 rows a week from one distribution
    assert same.metadata["drifting_features"].value == {}
    assert same.metadata["reference_week"].value == WEEK_1
    assert same.metadata["features_compared"].value == len(ROLES.features) + len(ROLES.categoricals)

    (moved,), _ = run_week(WEEK_2, model_input(WEEK_2, seed=2, shift=True))
    assert not moved.passed and moved.severity == dg.AssetCheckSeverity.WARN
    drifting = moved.metadata["drifting_features"].value
    assert set(drifting) == {*SHIFTED, SHIFTED_CATEGORY}
    assert all(value > 0.2 for value in drifting.values())
    top = moved.metadata["top_drifting_features"].value
    assert list(top)[:4] == sorted(drifting, key=lambda k: -drifting[k]) and len(top) == 5
    assert list(top)[4] not in drifting  # the largest unshifted feature stays under the threshold
    assert f"4 of {len(ROLES.features) + len(ROLES.categoricals)} feature(s) drifted" in moved.description

    # Run alone (no partition: e.g. from the asset's page), the check takes the week the warehouse holds.
    (alone,), _ = run_week(None, None)
    assert alone.metadata["snapshot_week"].value == WEEK_2 and not alone.passed


def test_the_first_week_is_skipped_with_a_reason(run_week):
    first = weekly_partitions.get_first_partition_key()
    evaluations, observations = run_week(first, model_input(first, seed=3))
    assert evaluations == []
    assert skipped_reason(observations).startswith(f"no previous week to compare with: {first} is the first week")


def test_a_week_the_warehouse_does_not_hold_is_skipped(run_week):
    run_week(WEEK_1, model_input(WEEK_1, seed=1))
    # WEEK_2's run, but the table holds WEEK_1's rows (e.g. a rerun of an old week's check)
    evaluations, observations = run_week(WEEK_2, model_input(WEEK_1, seed=1))
    assert evaluations == []
    assert f"holds no rows of week {WEEK_2}" in skipped_reason(observations)
    assert not run_week.lake.exists(reference_key(WEEK_2))  # no reference from the wrong week


def test_two_real_weeks_from_dbt_then_a_shifted_copy(lake_dir):
    """The real path: the generator's weeks through ingest and the dbt models (3,000 customers),
    the check in the same runs; then the warehouse's table replaced by a shifted copy of itself and
    the check run alone (no partition: it takes the week the warehouse holds)."""
    from engagement_dagster.defs.dbt.assets import dbt_features
    from engagement_dagster.defs.ingest.assets import raw_customers
    from engagement_dagster.defs.resources import build_resources

    resources = build_resources("local")
    config = {"ops": {"ingest__raw_customers": {"config": {"n_customers": 3_000}}}}
    found = {}
    for week in (WEEK_1, WEEK_2):
        result = dg.materialize([raw_customers, dbt_features, feature_drift], partition_key=week, resources=resources,
                                run_config=config)
        assert result.success
        found[week] = [e for e in result.get_asset_check_evaluations() if e.check_name == "feature_drift"]
    assert found[WEEK_1] == []  # no previous week
    (steady,) = found[WEEK_2]
    assert steady.passed and steady.metadata["max_psi"].value < 0.05, steady.description  # measured: 0.012

    with connect(resources["warehouse"].path, read_only=False) as con:
        con.execute(f"""create or replace table main.{MODEL_INPUT} as
            select * replace (sessions_last_7_days * 2 + 3 as sessions_last_7_days,
                              least(trust_score + 0.25, 1.0) as trust_score,
                              case when hash(customer_id) % 3 = 0 then 'web' else platform end as platform)
            from main.{MODEL_INPUT}""")
    result = dg.materialize([dbt_features, feature_drift], resources=resources,
                            selection=dg.AssetSelection.checks(feature_drift))
    (shifted,) = result.get_asset_check_evaluations()
    assert not shifted.passed and shifted.severity == dg.AssetCheckSeverity.WARN
    assert set(shifted.metadata["drifting_features"].value) == {"sessions_last_7_days", "trust_score", "platform"}
    assert shifted.metadata["snapshot_week"].value == WEEK_2
