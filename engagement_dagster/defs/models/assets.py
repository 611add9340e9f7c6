"""`models` stage: the six models, trained from the dbt model-ready table, registered in the
lake, promoted only through a blocking `promotion_gate` check."""

import os
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from pydantic import Field

from engagement_dagster.core import idle_work
from engagement_dagster.core.data.snapshot import read_oracle
from engagement_dagster.core.ml import evaluation
from engagement_dagster.core.ml.feature_roles import MODEL_INPUT, read_roles
from engagement_dagster.core.ml.registry import Commit, ModelRegistry, data_fingerprint, promotion_decision
from engagement_dagster.core.ml.training import (
    MAX_TEST_ROWS,
    MAX_TRAINING_ROWS,
    MODEL_KINDS,
    NaiveBaseline,
    new_model,
    sample_sql,
    splits,
)
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.partitions import weekly_partitions
from engagement_dagster.defs.resources.lake import Lake
from engagement_dagster.defs.resources.lease import WriterLease
from engagement_dagster.defs.resources.warehouse import Warehouse

MODEL_INPUT_KEY = dg.AssetKey(["features", MODEL_INPUT])
MODEL_KEYS = {name: dg.AssetKey(["models", name]) for name in MODEL_KINDS}


class TrainingConfig(dg.Config):
    max_training_rows: int = Field(default=MAX_TRAINING_ROWS, description=(
        "Train rows at most (valid rows in proportion): the customers with the smallest hash, the same "
        "customers week after week. More rows stop paying off beyond this (docs/benchmarks.md, learning curve)."))
    max_test_rows: int = Field(default=MAX_TEST_ROWS, description="Test rows at most (smallest hash first).")
    promotion_tolerance: float = Field(
        default=0.02, description="How much worse (relative) than the champion a challenger may be on the primary "
                                  "metric; negative: how much better it must be.")


GATE_DESCRIPTION = ("Promotes the challenger if it beats the naive baseline and is not worse than the champion "
                    "beyond the tolerance. A refused challenger is a warning, never a stop: the champion keeps "
                    "scoring, or, while there is none, the naive baseline (version 'baseline') does.")


@dg.multi_asset(
    specs=[dg.AssetSpec(key, deps=[MODEL_INPUT_KEY], group_name="models", description=MODEL_KINDS[name].description,
                        kinds={"xgboost"} if name not in ("segment_model", "anomaly_model") else {"scikitlearn"},
                        partitions_def=weekly_partitions, skippable=True)
           for name, key in MODEL_KEYS.items()],
    # Partitioned like the models: each week's decision is recorded against that week.
    check_specs=[dg.AssetCheckSpec("promotion_gate", asset=key, description=GATE_DESCRIPTION,
                                   partitions_def=weekly_partitions)
                 for key in MODEL_KEYS.values()],
    can_subset=True,
    partitions_def=weekly_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    name="train_models",
)
def train_models(context: dg.AssetExecutionContext, config: TrainingConfig, lake: Lake, warehouse: Warehouse,
                 writer_lease: WriterLease):
    """One read of the model-ready table, then every selected model, several side by side: XGBoost
    and scikit-learn release the GIL, so threads share the cores. One booster per core beats
    boosters that each try to use every core (measured: 5.9 s vs 7.0 s for six models on 2 cores)."""
    week = context.partition_key
    # The knowledge base's model may still be loading (started while dbt ran): it imports scikit-learn,
    # which the models import too, and two threads importing one package at once can deadlock.
    waited = idle_work.wait()
    if waited > 0.05:
        context.log.info(f"waited {waited:.2f} s for the set-up started while dbt ran (core/idle_work.py)")
    roles = read_roles(engagement_dbt.manifest_path)
    sample = warehouse.query(sample_sql(warehouse.relation(MODEL_INPUT), roles, config.max_training_rows,
                                        config.max_test_rows)).drop(columns="sample_rank")
    parts = splits(sample, roles)
    oracle = read_oracle(lake, week, parts["test"][roles.id])
    registry = ModelRegistry(lake)
    recovered = registry.recover()  # undoes what a killed training left: a commit half applied, staged files
    if any(recovered.values()):
        context.log.warning(f"a training that never finished was undone: {recovered}")
    selected = [name for name in TRAINING_ORDER if MODEL_KEYS[name] in context.selected_asset_keys]
    workers = max(1, min(len(selected), os.cpu_count() or 1))
    threads_per_model = max(1, (os.cpu_count() or 1) // workers)
    commit = Commit()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_train_one, name, parts, roles, oracle, registry, config.promotion_tolerance, week,
                               context.log, threads_per_model, commit) for name in selected]
        results = [future.result() for future in futures]
    # Every version, baseline and promotion of the step at once: a run killed before this line has
    # changed nothing that scoring or the API reads (core/ml/registry.py).
    registry.commit(commit)
    for events in results:
        yield from events


# Longest fits first, so the workers finish close together.
TRAINING_ORDER = ("content_recommender", "engagement_model", "segment_model", "churn_model", "ltv_model",
                  "anomaly_model")


def _train_one(name, parts, roles, oracle, registry, tolerance, week, log, threads, commit):
    key = MODEL_KEYS[name]
    model = new_model(name, parts["train"], roles)
    model.fit_threads = threads
    model.fit(parts["train"], parts["valid"])
    rep = evaluation.report(model, parts, roles, oracle)
    pointer = registry.champion(name)
    champion_metrics = None
    if pointer is not None:
        try:  # the champion, scored on this week's test rows: a like-for-like comparison
            champion_metrics = registry.load(name, pointer["version"]).evaluate(parts["test"])
        except KeyError as exc:  # the feature table lost a column the champion needs
            log.warning(f"{name}: champion {pointer['version']} cannot score this table ({exc}); "
                        "comparing with the baseline only")
    rep["champion_on_this_test"] = champion_metrics
    decision = promotion_decision(type(model), rep["test"], rep["baseline"], champion_metrics, tolerance,
                                  test_rows=int(rep["rows"]["test"]))
    words = evaluation.decision_words(type(model), decision, (pointer or {}).get("version"))
    rep["decision"] = words
    fingerprint = data_fingerprint(parts["train"])
    card = evaluation.model_card(rep, decision, week, fingerprint, words)
    version = registry.stage(model, rep, card, fingerprint, commit)
    commit.baselines[name] = NaiveBaseline.fit(name, parts["train"]).to_json()
    if decision.promote:
        commit.promote(name, version, decision)
    champion = version if decision.promote else (pointer or {}).get("version")
    serving = champion or NaiveBaseline.version
    if not decision.promote:
        log.warning(f"{name}: {words}")
    return _materialization(key, name, rep, words, decision, version, serving, card), _gate(key, words, decision,
                                                                                              serving)


def _materialization(key, name, rep, words, decision, version, serving, card) -> dg.MaterializeResult:
    """What the asset's page shows: the decision in words, the short card inline, a few headline test
    metrics rounded to 4 significant digits (numbers, so the UI plots them across runs; the registry's
    metrics.json keeps full precision), the primary metric's baseline and oracle ceiling, and the full
    card (behind a link in the UI: it is longer than what the UI shows inline)."""
    primary = MODEL_KINDS[name].primary_metric
    ceiling = (rep["oracle_ceiling"] or {}).get(primary)
    metadata = {
        "decision": words,
        "model_card": dg.MetadataValue.md(evaluation.inline_card(rep, words)),
        **{f"test_{m}": v for m, v in evaluation.headline(name, rep).items()},
        f"baseline_{primary}": evaluation.round_sig(rep["baseline"][primary]),
        **({f"oracle_{primary}": evaluation.round_sig(ceiling)} if ceiling is not None else {}),
        "promoted": decision.promote,
        "serving": serving,
        "version": version,
        "test_rows": int(rep["rows"]["test"]),
        "train_rows": int(rep["rows"]["train"]),
    }
    if rep.get("calibration"):
        metadata["distinct_probabilities"] = int(rep["calibration"]["served"]["distinct_probabilities"])
    if rep.get("segments"):
        metadata["segments"] = dg.MetadataValue.md("\n".join(
            ["| segment | share of training rows | named after |", "|---|---|---|",
             *(f"| {s['name']} | {s['share']:.1%} | "
               + (", ".join(f"{n['dimension']} {n['z']:+.2f} sd" for n in s["named_after"]) or "–") + " |"
               for s in rep["segments"])]))
    metadata["full_model_card"] = dg.MetadataValue.md(card)
    return dg.MaterializeResult(asset_key=key, metadata=metadata)


def _gate(key, words, decision, serving) -> dg.AssetCheckResult:
    metadata = {"serving": serving, "metric": decision.metric,
                "challenger": evaluation.round_sig(decision.challenger),
                "baseline": evaluation.round_sig(decision.baseline), "tolerance": decision.tolerance}
    if decision.champion is not None:
        metadata["champion"] = evaluation.round_sig(decision.champion)
    return dg.AssetCheckResult(asset_key=key, check_name="promotion_gate", passed=decision.promote,
                               severity=dg.AssetCheckSeverity.WARN, description=words, metadata=metadata)
