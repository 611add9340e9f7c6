"""The knowledge base's documents: markdown generated every week from the week's real results (the
model registry's reports, the dbt marts, the dbt manifest), never from hand-written figures.

    kb/snapshot_week=YYYY-MM-DD/<doc_id>.md      YAML front-matter, then the markdown body
    kb/snapshot_week=YYYY-MM-DD/manifest.json    every doc id with the sha256 of its file, the serving
                                                 model versions and the week's key figures

Plain Python, no Dagster (a test asserts it): the lake is any object with ``read_bytes``,
``write_bytes``, ``list_keys`` and ``exists``; the warehouse is a ``query(sql) -> DataFrame``
callable (see `Marts`). Nothing time-dependent is written, so the same week regenerated from the
same results gives the same bytes. Each file is written atomically and the manifest last: a week
is complete once its manifest exists, and older weeks stay readable by week.

The dbt marts keep every snapshot week (one row per customer and week, or per week): a week's
documents read that week's rows, and a week the marts do not hold is refused, naming the weeks they do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from engagement_dagster.core.ml.feature_roles import MODEL_INPUT, ROLES

# The six models in the order the documents show them, each with its promotion gate's primary
# metric (kept equal to training.MODEL_KINDS by a test; importing training would load XGBoost).
MODELS: dict[str, str] = {
    "engagement_model": "rmse",
    "churn_model": "auc",
    "ltv_model": "mae",
    "content_recommender": "top3_accuracy",
    "segment_model": "silhouette",
    "anomaly_model": "flagged_share",
}
# What each model predicts, in a reader's words: in each card's title, so a question about "the lifetime
# value model" finds ltv_model's card.
SUBJECT = {
    "engagement_model": "engagement score prediction",
    "churn_model": "30-day churn risk prediction",
    "ltv_model": "customer lifetime value (LTV) prediction",
    "content_recommender": "content category recommendation",
    "segment_model": "customer segmentation",
    "anomaly_model": "anomaly detection (unusual customers)",
}
# A model card's summary line on its primary metric, in the words a reader asks with.
QUALITY = {
    "engagement_model": "How accurate the engagement score prediction is",
    "churn_model": "How accurate the 30-day churn risk prediction is",
    "ltv_model": "How good (accurate) the customer lifetime value (LTV) prediction is",
    "content_recommender": "How well the content category recommender does",
    "segment_model": "How well separated the customer segments are",
    "anomaly_model": "What share of customers the anomaly detection model flags",
}
HIGHER_IS_BETTER = {"rmse": False, "auc": True, "mae": False, "top3_accuracy": True, "silhouette": True}
# What a mean |SHAP| value is measured in: each booster's margin.
SHAP_SCALE = {
    "engagement_model": "engagement score (a fraction 0–1)",
    "churn_model": "log-odds of churn (before calibration)",
    "ltv_model": "log of lifetime value (Tweedie log link)",
    "content_recommender": "softmax margin, summed over the content categories",
}
MARTS = ("predictions_final", "qa_review_sample", "high_engagement_customers", "at_risk_customers",
         "churn_by_segment", "weekly_prediction_summary", "weekly_summary")
PREDICTIONS_ASSET = "scoring/customer_predictions"
KB_PREFIX = "kb"
BASELINE_VERSION = "baseline"  # what predictions_final says while a model's naive baseline serves


class LakeLike(Protocol):
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> str: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def exists(self, key: str) -> bool: ...


class WeekNotInWarehouse(ValueError):
    """The marts hold no rows for the week asked for (its scoring marts were never built)."""


# ---------------------------------------------------------------------------------------------
# Documents and where they live


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    body_markdown: str
    metadata: dict[str, Any]  # the front-matter: doc_id, title, snapshot_week, model_versions, sources, …

    def render(self) -> str:
        return "---\n" + _front_matter(self.metadata) + "---\n\n" + self.body_markdown

    @property
    def words(self) -> int:
        return len(self.body_markdown.split())


@dataclass(frozen=True)
class KnowledgeBaseWeek:
    week: str
    documents: list[Document]
    figures: dict[str, Any]  # the key figures the next week compares with
    model_versions: dict[str, str]  # what scored the week: a registry version or "baseline"
    previous_week: str | None


def week_prefix(week: str) -> str:
    return f"{KB_PREFIX}/snapshot_week={week}/"


def document_key(week: str, doc_id: str) -> str:
    return f"{week_prefix(week)}{doc_id}.md"


def manifest_key(week: str) -> str:
    return f"{week_prefix(week)}manifest.json"


_MANIFEST_KEY = re.compile(rf"^{KB_PREFIX}/snapshot_week=(\d{{4}}-\d{{2}}-\d{{2}})/manifest\.json$")


def available_weeks(lake: LakeLike) -> list[str]:
    """Weeks whose documents are complete (their manifest was written), oldest first."""
    return sorted(m.group(1) for key in lake.list_keys(f"{KB_PREFIX}/") if (m := _MANIFEST_KEY.match(key)))


def read_manifest(lake: LakeLike, week: str) -> dict:
    return json.loads(lake.read_bytes(manifest_key(week)))


def read_document(lake: LakeLike, week: str, doc_id: str) -> str:
    return lake.read_bytes(document_key(week, doc_id)).decode()


def write_week(lake: LakeLike, kb_week: KnowledgeBaseWeek) -> dict:
    """Write every document, then the manifest (the week's commit point); remove documents an
    earlier run of the same week wrote that this one no longer has. Returns the manifest."""
    entries = []
    for doc in kb_week.documents:
        data = doc.render().encode()
        key = document_key(kb_week.week, doc.doc_id)
        lake.write_bytes(key, data)
        entries.append({"doc_id": doc.doc_id, "title": doc.title, "doc_type": doc.metadata["doc_type"], "key": key,
                        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "words": doc.words})
    manifest = {"snapshot_week": kb_week.week, "previous_week": kb_week.previous_week, "documents": entries,
                "model_versions": kb_week.model_versions, "figures": kb_week.figures}
    lake.write_bytes(manifest_key(kb_week.week),
                     (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())
    keep = {entry["key"] for entry in entries}
    delete = getattr(lake, "delete", None)
    if delete is not None:
        for key in lake.list_keys(week_prefix(kb_week.week)):
            if key.endswith(".md") and key not in keep:
                delete(key)
    return manifest


def parse_document(text: str) -> tuple[dict[str, Any], str]:
    """A rendered document back into (front-matter, body): the inverse of `Document.render`."""
    if not text.startswith("---\n"):
        return {}, text
    head, body = text[4:].split("\n---\n", 1)
    meta: dict[str, Any] = {}
    current = ""
    for line in head.splitlines():
        if line.startswith("  - "):
            meta[current] = [*(meta[current] or []), json.loads(line[4:])]
        elif line.startswith("  "):
            key, value = line[2:].split(": ", 1)
            meta[current] = {**(meta[current] or {}), key: json.loads(value)}
        else:
            key, _, value = line.partition(":")
            current = key
            meta[key] = json.loads(value) if value.strip() else None
    return meta, body.removeprefix("\n")


def _front_matter(metadata: Mapping[str, Any]) -> str:
    """YAML with every scalar written as JSON (valid YAML, and the same bytes every time)."""
    lines = []
    for key, value in metadata.items():
        if isinstance(value, Mapping):
            lines.append(f"{key}:" if value else f"{key}: {{}}")
            lines += [f"  {k}: {_scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list | tuple):
            lines.append(f"{key}:" if value else f"{key}: []")
            lines += [f"  - {_scalar(v)}" for v in value]
        else:
            lines.append(f"{key}: {_scalar(value)}")
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Reading the week's results: the dbt marts


@dataclass(frozen=True)
class Marts:
    """The dbt marts as the knowledge base reads them: read-only SQL through ``query``, tables
    named in ``schema`` (the DuckDB schema or the Glue database). The SQL is plain enough for
    DuckDB and Athena (Trino) alike."""

    query: Callable[[str], pd.DataFrame]
    schema: str | None = None

    def relation(self, table: str) -> str:
        return f'"{self.schema}"."{table}"' if self.schema else f'"{table}"'

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return [{k: _plain(v) for k, v in row.items()} for row in self.query(sql).to_dict("records")]

    def columns(self, table: str) -> list[str]:
        return [str(c) for c in self.query(f"select * from {self.relation(table)} limit 0").columns]

    def week(self, table: str, week: str) -> str:
        """``table``'s rows of one snapshot week, as a subquery: the marts keep every week."""
        return f"(select * from {self.relation(table)} where snapshot_week = date '{_week(week)}')"


def _plain(value: Any) -> Any:
    """A warehouse value as plain Python: numbers, text, ISO dates, None for any null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass(frozen=True)
class MartResults:
    week: str
    summary: dict[str, Any]
    serving_versions: dict[str, str]
    churn_by_segment: list[dict[str, Any]]
    at_risk: dict[str, Any]
    at_risk_segments: list[dict[str, Any]]
    at_risk_drivers: list[dict[str, Any]]
    at_risk_methods: list[dict[str, Any]]
    high_engagement: dict[str, Any]
    high_engagement_segments: list[dict[str, Any]]
    high_engagement_categories: list[dict[str, Any]]
    trend: dict[str, Any] = field(default_factory=dict)  # the weekly_summary mart's row: distribution, outcomes


def read_marts(marts: Marts, week: str) -> MartResults:
    """The week's figures from the marts, every query on that week's rows only."""
    def rel(table: str) -> str:
        return f"{marts.week(table, week)} as {table}"

    summaries = marts.rows(f"select * from {rel('weekly_prediction_summary')}")
    if len(summaries) != 1:
        held = sorted(str(row["snapshot_week"])[:10] for row in marts.rows(
            f"select distinct snapshot_week from {marts.relation('weekly_prediction_summary')}"))
        raise WeekNotInWarehouse(
            f"the warehouse's marts hold no rows for snapshot week {week} (they hold: {', '.join(held) or 'none'}): "
            f"build {week}'s scoring marts before its knowledge-base documents")
    version_columns = ", ".join(f"{name}_version" for name in MODELS)
    versions = marts.rows(f"select {version_columns}, count(*) as customers from {rel('predictions_final')} "
                          f"group by {version_columns}")
    if len(versions) != 1:  # one scoring run writes one version per model: anything else is a mixed table
        raise ValueError(f"predictions_final mixes model versions: {versions}")
    segments_sql = ("select segment, count(*) as customers, sum(value_at_risk_usd) as value_at_risk_usd, "
                    "avg(churn_probability) as mean_churn_probability, "
                    "sum(predicted_lifetime_value_usd) as predicted_ltv_usd from {table} group by segment")
    at_risk = rel("at_risk_customers")
    drivers = " union all ".join(
        f"select churn_driver_{i} as driver, {int(i == 1)} as is_top, churn_driver_{i}_contribution as contribution "
        f"from {at_risk}" for i in (1, 2, 3))
    high = rel("high_engagement_customers")
    return MartResults(
        week=week,
        summary=summaries[0],
        trend=(marts.rows(f"select * from {rel('weekly_summary')}") or [{}])[0],
        serving_versions={name: str(versions[0][f"{name}_version"]) for name in MODELS},
        churn_by_segment=_sorted(marts.rows(
            "select segment, customers, mean_churn_probability, expected_churners, observed_churn_rate, "
            f"mean_predicted_ltv_usd, value_at_risk_usd from {rel('churn_by_segment')}"), "customers", "segment"),
        at_risk=marts.rows(
            "select count(*) as customers, sum(predicted_lifetime_value_usd) as predicted_ltv_usd, "
            "sum(value_at_risk_usd) as value_at_risk_usd, avg(churn_probability) as mean_churn_probability, "
            "min(churn_probability) as min_churn_probability, "
            f"min(predicted_lifetime_value_usd) as min_predicted_ltv_usd from {at_risk}")[0],
        at_risk_segments=_sorted(marts.rows(segments_sql.format(table=at_risk)), "customers", "segment"),
        at_risk_drivers=_sorted(marts.rows(
            "select driver, sum(is_top) as top_driver, count(*) as in_top_3, "
            "sum(case when contribution > 0 then 1 else 0 end) as raises_risk, "
            f"avg(contribution) as mean_contribution from ({drivers}) d where driver is not null group by driver"),
            "in_top_3", "driver"),
        at_risk_methods=_sorted(marts.rows(
            f"select churn_drivers_method as method, count(*) as customers from {at_risk} "
            "group by churn_drivers_method"), "customers", "method"),
        high_engagement=marts.rows(
            "select count(*) as customers, avg(predicted_engagement_score) as mean_predicted_engagement, "
            "min(predicted_engagement_score) as min_predicted_engagement, "
            "avg(engagement_score) as mean_observed_engagement, avg(churn_probability) as mean_churn_probability, "
            "sum(predicted_lifetime_value_usd) as predicted_ltv_usd, "
            f"avg(predicted_lifetime_value_usd) as mean_predicted_ltv_usd from {high}")[0],
        high_engagement_segments=_sorted(marts.rows(segments_sql.format(table=high)), "customers", "segment"),
        high_engagement_categories=_sorted(marts.rows(
            f"select recommended_category_1 as category, count(*) as customers from {high} "
            "group by recommended_category_1"), "customers", "category"),
    )


def _sorted(rows: list[dict], count: str, name: str) -> list[dict]:
    """Largest first, then by name: one order whatever order the warehouse returned."""
    return sorted(rows, key=lambda r: (-(r[count] or 0), str(r[name])))


# ---------------------------------------------------------------------------------------------
# Reading the week's results: the model registry


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    week: str | None  # the snapshot week it was trained on (its card says)
    report: dict  # metrics.json: test, baseline, oracle_ceiling, fairness, importance, segments, …
    gate: str | None  # PROMOTED / REFUSED
    gate_reason: str | None

    @property
    def key(self) -> str:
        return f"models/{self.name}/{self.version}/metrics.json"


@dataclass(frozen=True)
class ModelResult:
    name: str
    trained: RegisteredVersion | None  # trained for this week (the latest such version)
    serving_version: str  # what scored this week's customers: a version or "baseline"
    serving: RegisteredVersion | None  # its registry entry (None for the naive baseline)
    baseline_params: dict | None  # the naive baseline of the latest training

    @property
    def reported(self) -> RegisteredVersion | None:
        """The version whose figures a document shows: this week's, else the one that served."""
        return self.trained or self.serving


_CARD_WEEK = re.compile(r"^- snapshot week: (\d{4}-\d{2}-\d{2})$", re.M)
_CARD_GATE = re.compile(r"^(PROMOTED|REFUSED): (.*?)\.?$", re.M)


def _versions(lake: LakeLike, name: str) -> list[str]:
    keys = lake.list_keys(f"models/{name}/")
    return sorted({k.split("/")[2] for k in keys if k.endswith("/version.json") and k.count("/") == 3})


def _card(lake: LakeLike, name: str, version: str) -> str:
    key = f"models/{name}/{version}/card.md"
    return lake.read_bytes(key).decode() if lake.exists(key) else ""


def _registered(lake: LakeLike, name: str, version: str, card: str | None = None) -> RegisteredVersion:
    card = _card(lake, name, version) if card is None else card
    week = _CARD_WEEK.search(card)
    gate = _CARD_GATE.search(card)
    report = json.loads(lake.read_bytes(f"models/{name}/{version}/metrics.json"))
    return RegisteredVersion(name, version, week.group(1) if week else None, report,
                             gate.group(1) if gate else None, gate.group(2) if gate else None)


def read_registry(lake: LakeLike, week: str, serving_versions: Mapping[str, str]) -> dict[str, ModelResult]:
    results = {}
    for name in MODELS:
        versions = _versions(lake, name)
        trained = None
        for version in reversed(versions):  # newest first: this week's training is usually the latest
            card = _card(lake, name, version)
            found = _CARD_WEEK.search(card)
            if found and found.group(1) == week:
                trained = _registered(lake, name, version, card)
                break
        serving_version = serving_versions[name]
        if trained is not None and serving_version == trained.version:
            serving = trained
        elif serving_version in versions:
            serving = _registered(lake, name, serving_version)
        else:
            serving = None
        baseline_key = f"models/{name}/baseline.json"
        params = json.loads(lake.read_bytes(baseline_key))["params"] if lake.exists(baseline_key) else None
        results[name] = ModelResult(name, trained, serving_version, serving, params)
    return results


# ---------------------------------------------------------------------------------------------
# Formatting


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _f4(value: Any) -> str:
    return "–" if _missing(value) else f"{value:.4f}"


def _g4(value: Any) -> str:
    return "–" if _missing(value) else f"{value:.4g}"


def _usd(value: Any) -> str:
    return "–" if _missing(value) else f"{value:,.2f}"


def _count(value: Any) -> str:
    return "–" if _missing(value) else f"{round(value):,}"


def _pct(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * value:.2f}%"


def _share(part: Any, whole: Any) -> float | None:
    return None if _missing(part) or _missing(whole) or not whole else part / whole


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _document(doc_id: str, title: str, doc_type: str, week: str, versions: Mapping[str, str],
              source_assets: Sequence[str], sources: Sequence[str], body: Sequence[str],
              **extra: Any) -> Document:
    metadata = {"doc_id": doc_id, "title": title, "doc_type": doc_type, "snapshot_week": week,
                "model_versions": dict(versions), "source_assets": list(source_assets), "sources": list(sources),
                **extra}
    return Document(doc_id, title, "\n".join(body).rstrip("\n") + "\n", metadata)


def _table_source(table: str) -> str:
    return f"warehouse:{table}"


# ---------------------------------------------------------------------------------------------
# The documents


def _baseline_text(name: str, params: dict | None) -> str:
    """What the naive baseline predicts, in words, from its learnt parameters."""
    if params is None:
        return "no naive baseline is registered"
    if name == "engagement_model":
        return f"every customer gets the training mean engagement {_f4(params.get('mean'))}"
    if name == "churn_model":
        return f"every customer gets the training churn rate {_f4(params.get('rate'))}"
    if name == "ltv_model":
        return f"every customer gets the training median lifetime value {_usd(params.get('median'))} USD"
    if name == "content_recommender":
        return "every customer gets the three most popular categories: " + ", ".join(params.get("popularity", [])[:3])
    if name == "segment_model":
        return "every customer is in one segment, 'All customers'"
    return "no customer is flagged as an anomaly"


def _serving_text(result: ModelResult) -> str:
    trained, serving = result.trained, result.serving
    if result.serving_version == BASELINE_VERSION:
        return (f"No champion: this week's predictions came from the naive baseline (version \"baseline\"): "
                f"{_baseline_text(result.name, result.baseline_params)}.")
    where = f"trained for week {serving.week}" if serving and serving.week else "from the registry"
    if trained is not None and trained.version == result.serving_version:
        return f"This week's version served: it scored every customer of week {trained.week}."
    if trained is not None and trained.gate == "REFUSED":
        return f"This week's version was refused; the champion {result.serving_version} ({where}) kept scoring."
    if trained is not None:
        return (f"This week's version was promoted after the week was scored; the predictions used "
                f"{result.serving_version} ({where}).")
    return f"No version was trained for this week; the predictions used {result.serving_version} ({where})."


def _summary(result: ModelResult, primary: str) -> list[str]:
    """The card's answers in plain words (how accurate, how calibrated, how fair, what matters most),
    each figure formatted exactly as in the tables below. They describe the version that scored this
    week's customers; when that is not this week's new version (the champion was kept), a last line
    gives the new version's figure too."""
    name, trained, serving = result.name, result.trained, result.serving
    about = serving or trained  # the naive baseline has no report: then the trained version's
    rep = about.report
    test, baseline, ceiling = rep.get("test", {}), rep.get("baseline", {}), rep.get("oracle_ceiling") or {}
    which = ("" if about is trained else
             f" (the version that scored this week, {about.version}, trained for week {about.week or '–'})")
    out = ["## Summary", ""]
    if primary in test:
        direction = {True: "higher is better", False: "lower is better"}.get(HIGHER_IS_BETTER.get(primary),
                                                                            "near the target rate is better")
        out.append(f"{QUALITY[name]}{which}: test {primary} {_f4(test[primary])} ({direction}), against "
                   f"{_f4(baseline.get(primary))} for the naive baseline and {_f4(ceiling.get(primary))} for the "
                   f"oracle ceiling, on {_count(rep.get('rows', {}).get('test'))} test rows.")
    if name == "churn_model" and "ece" in test:
        out.append(f"How well calibrated the churn probabilities are: expected calibration error (ECE) "
                   f"{_f4(test['ece'])} and Brier score {_f4(test.get('brier'))} on the test split (isotonic "
                   "calibration).")
    if rep.get("fairness"):
        worst = max(rep["fairness"], key=lambda k: rep["fairness"][k])
        out.append(f"How fair: the largest fairness gap across gender and age bands is {worst} "
                   f"{_f4(rep['fairness'][worst])}.")
    if rep.get("importance_mean_abs_shap"):
        top = list(rep["importance_mean_abs_shap"])[:3]
        out.append(f"Top features of the {SUBJECT[name]} (what drives it most, by mean |SHAP|): {', '.join(top)}.")
    if about.gate:
        out.append(f"Promotion decision: {about.gate}.")
    if trained is not None and about is not trained and primary in trained.report.get("test", {}):
        out.append(f"This week's newly trained version {trained.version} ({trained.gate or 'not gated'}): test "
                   f"{primary} {_f4(trained.report['test'][primary])}.")
    if result.serving_version == BASELINE_VERSION:
        out.append("Not serving: the naive baseline scored this week's customers (see below).")
    return [*out, ""] if len(out) > 2 else []


def model_card(result: ModelResult, week: str, versions: Mapping[str, str]) -> Document:
    name, reported = result.name, result.reported
    primary = MODELS[name]
    title = f"Model card: {name}, {SUBJECT[name]} (week of {week})"
    lines = [f"# {title}", ""]
    sources = []
    if reported is None:
        lines += ["No version of this model is registered.", "", _serving_text(result)]
    else:
        rep = reported.report
        sources.append(f"lake:{reported.key}")
        if result.serving is not None and result.serving is not reported:
            sources.append(f"lake:{result.serving.key}")
        lines += [rep.get("description", ""), ""]
        lines += _summary(result, primary)
        lines += ["## Versions", ""]
        lines += _table(["role", "version", "trained for week"], [
            ("reported on this card" + (" (trained for this week)" if result.trained else " (serving; not retrained)"),
             reported.version, reported.week or "–"),
            ("served this week's predictions", result.serving_version,
             (result.serving.week or "–") if result.serving else "–"),
        ])
        gate = f"{reported.gate}: {reported.gate_reason}." if reported.gate else "not recorded."
        lines += ["", f"Promotion gate: {gate}", "", _serving_text(result), ""]
        rows = rep.get("rows", {})
        lines += ["## Data", "", "Rows: " + ", ".join(f"{k} {_count(v)}" for k, v in rows.items()) + "."]
        fit = {k: v for k, v in rep.get("fit", {}).items() if not isinstance(v, dict)}
        if fit:
            lines += ["", "Fit: " + ", ".join(f"{k} {v}" for k, v in fit.items()) + "."]
        champion = rep.get("champion_on_this_test") or {}
        ceiling = rep.get("oracle_ceiling") or {}
        direction = {True: "higher is better", False: "lower is better"}.get(HIGHER_IS_BETTER.get(primary))
        lines += ["", f"## Test metrics (test split, {_count(rows.get('test'))} rows)", "",
                  f"Primary metric (the promotion gate's): {primary}"
                  + (f", {direction}." if direction else ", which must stay near the target rate.")
                  + " The champion column is the previous champion scored on the same test rows; the oracle "
                    "ceiling is the generator's ground truth on them, the best any model could reach.", ""]
        lines += _table(["metric", "model", "champion on the same rows", "naive baseline", "oracle ceiling"],
                        [(m, _f4(v), _f4(champion.get(m)), _f4(rep.get("baseline", {}).get(m)), _f4(ceiling.get(m)))
                         for m, v in rep.get("test", {}).items()])
        if name == "churn_model":
            lines += ["", "## Calibration (churn probability, test split)", "",
                      ("Probabilities are isotonic-calibrated on the valid split. ECE: mean gap between predicted and "
                       "observed churn over ten probability bins; Brier: mean squared error of the probability."), ""]
            lines += _table(["measure", "model", "naive baseline", "oracle ceiling"],
                            [(m, _f4(rep["test"].get(m)), _f4(rep.get("baseline", {}).get(m)), _f4(ceiling.get(m)))
                             for m in ("ece", "brier") if m in rep.get("test", {})])
        if rep.get("lift_by_decile"):
            lift = rep["lift_by_decile"]
            lines += ["", "## Lift by predicted-risk decile (test split, highest risk first)", "",
                      (f"The top decile churns at {lift[0]:.2f}× the test churn rate, the bottom decile at "
                       f"{lift[-1]:.2f}×."), ""]
            lines += _table(["decile", "lift"], [(i, _f4(v)) for i, v in enumerate(lift, 1)])
        if rep.get("fairness"):
            fairness = rep["fairness"]
            decision = ("churn probability ≥ 0.5" if name == "churn_model"
                        else "predicted engagement ≥ 0.7")
            worst = max(fairness, key=lambda k: fairness[k])
            lines += ["", "## Fairness gaps (test split)", "",
                      (f"For the decision \"{decision}\": demographic parity is the largest difference in the "
                       "decision rate between groups, equal opportunity the largest difference in its true-positive "
                       f"rate (groups under 30 rows left out). Largest gap: {worst} {_f4(fairness[worst])}."), ""]
            lines += _table(["gap", "value"], [(k, _f4(v)) for k, v in fairness.items()])
        if rep.get("importance_mean_abs_shap"):
            lines += ["", "## Top features by mean |SHAP| (exact TreeSHAP on a test sample)", "",
                      f"In units of the {SHAP_SCALE.get(name, 'model margin')}.", ""]
            lines += _table(["rank", "feature", "mean abs SHAP"],
                            [(i, f, _g4(v)) for i, (f, v) in enumerate(rep["importance_mean_abs_shap"].items(), 1)])
        if rep.get("segments"):
            dims = list(rep["segments"][0]["profile_z"])
            lines += ["", "## Segments (centroids in standard deviations from the mean)", ""]
            lines += _table(["segment", "share of training rows", *dims],
                            [(s["name"], _pct(s["share"]), *(f"{s['profile_z'][d]:+.2f}" for d in dims))
                             for s in rep["segments"]])
        if isinstance(rep.get("fit", {}).get("silhouette_by_k"), dict):
            lines += ["", "Silhouette by k (train sample): "
                      + ", ".join(f"k={k} {_f4(v)}" for k, v in rep["fit"]["silhouette_by_k"].items()) + "."]
    return _document(
        f"model_card_{name}", title, "model_card", week, versions,
        [f"models/{name}", PREDICTIONS_ASSET, "scoring/predictions_final"], sources, lines,
        model=name, reported_version=reported.version if reported else None,
        reported_week=reported.week if reported else None, serving_version=result.serving_version,
        promotion=reported.gate if reported else None)


def feature_importance(models: Mapping[str, ModelResult], week: str, versions: Mapping[str, str]) -> Document:
    with_importance = {n: r.reported for n, r in models.items()
                       if r.reported is not None and r.reported.report.get("importance_mean_abs_shap")}
    ranks: dict[str, dict[str, int]] = {}
    for name, reported in with_importance.items():
        for rank, feature in enumerate(reported.report["importance_mean_abs_shap"], 1):
            ranks.setdefault(feature, {})[name] = rank
    order = sorted(ranks, key=lambda f: (min(ranks[f].values()), f))
    lines = [f"# Feature importance across models (week of {week})", "",
             ("Global importance is the mean |SHAP| of each feature (exact TreeSHAP on a sample of the test split) "
              "for the XGBoost models' versions listed below. Each model's values are in its own units, so compare "
              "ranks across models, values within one. A dash: not among that model's 15 most important features."),
             ""]
    lines += _table(["model", "version", "units"],
                    [(n, r.version, SHAP_SCALE.get(n, "model margin")) for n, r in with_importance.items()])
    lines += ["", "## Mean |SHAP| by feature and model", ""]
    lines += _table(["feature", "best rank", *with_importance], [
        (f, min(ranks[f].values()),
         *(_g4(r.report["importance_mean_abs_shap"].get(f)) for r in with_importance.values())) for f in order])
    lines += ["", "## Five most important features per model", ""]
    lines += [f"- What drives the {SUBJECT[n]} ({n}) most: " + ", ".join(list(r.report["importance_mean_abs_shap"])[:5])
              for n, r in with_importance.items()]
    shared = [f for f in order if len(ranks[f]) == len(with_importance) and len(with_importance) > 1]
    if shared:
        lines += ["", "Among the top 15 of every model: " + ", ".join(shared) + "."]
    return _document("feature_importance", f"Feature importance across models (week of {week})",
                     "feature_importance", week, versions, [f"models/{n}" for n in with_importance],
                     [f"lake:{r.key}" for r in with_importance.values()], lines,
                     reported_versions={n: r.version for n, r in with_importance.items()})


def _profile_words(profile: Mapping[str, float]) -> str:
    high = sorted(((d, z) for d, z in profile.items() if z >= 0.25), key=lambda x: (-x[1], x[0]))[:3]
    low = sorted(((d, z) for d, z in profile.items() if z <= -0.25), key=lambda x: (x[1], x[0]))[:3]
    parts = []
    if high:
        parts.append("above average in " + ", ".join(f"{d} ({z:+.2f} sd)" for d, z in high))
    if low:
        parts.append("below average in " + ", ".join(f"{d} ({z:+.2f} sd)" for d, z in low))
    return "; ".join(parts) or "close to average on every dimension"


def segment_profiles(result: ModelResult, marts: MartResults, week: str, versions: Mapping[str, str]) -> Document:
    by_name = {row["segment"]: row for row in marts.churn_by_segment}
    total = marts.summary.get("customers")
    lines = [f"# Segment profiles (week of {week})", ""]
    serving = result.serving
    profiles = (serving.report.get("segments") or []) if serving is not None else []
    sources = [_table_source("churn_by_segment")]
    if result.serving_version == BASELINE_VERSION:
        lines += [(f"The segment model is on its naive baseline this week: "
                   f"{_baseline_text('segment_model', result.baseline_params)}."), ""]
    elif serving is not None:
        sources.insert(0, f"lake:{serving.key}")
        lines += [(f"Segments of the segment model that scored this week ({result.serving_version}, trained for week "
                   f"{serving.week or '–'}): k-means on standardized behavioural features, each segment named from its "
                   "centroid. This week's figures come from the churn_by_segment mart."), ""]
    names = [p["name"] for p in profiles] + sorted(set(by_name) - {p["name"] for p in profiles})
    names = sorted(names, key=lambda n: (-(by_name.get(n, {}).get("customers") or 0), n))
    share_in_training = {p["name"]: p["share"] for p in profiles}
    lines += _table(["segment", "customers", "share of customers", "share of training rows", "mean churn probability",
                     "mean predicted LTV (USD)", "value at risk (USD)"], [
        (n, _count(by_name.get(n, {}).get("customers")), _pct(_share(by_name.get(n, {}).get("customers"), total)),
         _pct(share_in_training.get(n)), _f4(by_name.get(n, {}).get("mean_churn_probability")),
         _usd(by_name.get(n, {}).get("mean_predicted_ltv_usd")), _usd(by_name.get(n, {}).get("value_at_risk_usd")))
        for n in names])
    if profiles:
        dims = list(profiles[0]["profile_z"])
        lines += ["", "## Profiles (centroid, standard deviations from the training mean)", ""]
        lines += _table(["segment", *dims], [(p["name"], *(f"{p['profile_z'][d]:+.2f}" for d in dims))
                                             for p in sorted(profiles, key=lambda p: names.index(p["name"]))])
        lines += ["", "## In words", ""]
        for p in sorted(profiles, key=lambda p: names.index(p["name"])):
            row = by_name.get(p["name"], {})
            lines.append(f"- **{p['name']}** ({_count(row.get('customers'))} customers, "
                         f"{_pct(_share(row.get('customers'), total))}): {_profile_words(p['profile_z'])}. "
                         f"Mean churn probability {_f4(row.get('mean_churn_probability'))}, value at risk "
                         f"{_usd(row.get('value_at_risk_usd'))} USD.")
    return _document("segment_profiles", f"Segment profiles (week of {week})", "segment_profiles", week, versions,
                     ["models/segment_model", "scoring/churn_by_segment"], sources, lines,
                     segment_model_version=result.serving_version)


def churn_by_segment(marts: MartResults, week: str, versions: Mapping[str, str]) -> Document:
    rows = marts.churn_by_segment
    lines = [f"# Churn by segment (week of {week})", "",
             ("From the churn_by_segment mart: customers, churn risk and value at risk (churn probability × predicted "
              "lifetime value) per segment of the serving segment model. Observed churn is the week's recorded "
              "30-day churn, where known."), ""]
    lines += _table(["segment", "customers", "mean churn probability", "expected churners", "observed churn rate",
                     "mean predicted LTV (USD)", "value at risk (USD)"],
                    [(r["segment"], _count(r["customers"]), _f4(r["mean_churn_probability"]),
                      f"{r['expected_churners']:,.1f}", _f4(r["observed_churn_rate"]),
                      _usd(r["mean_predicted_ltv_usd"]), _usd(r["value_at_risk_usd"])) for r in rows])
    if rows:
        riskiest = max(rows, key=lambda r: (r["mean_churn_probability"] or 0, r["segment"]))
        costliest = max(rows, key=lambda r: (r["value_at_risk_usd"] or 0, r["segment"]))
        total_risk = sum(r["value_at_risk_usd"] or 0 for r in rows)
        lines += ["", (f"{len(rows)} segment(s), {_count(sum(r['customers'] for r in rows))} customers, "
                       f"{sum(r['expected_churners'] or 0 for r in rows):,.1f} expected churners and "
                       f"{_usd(total_risk)} USD of value at risk. Highest mean churn probability: "
                       f"{riskiest['segment']} ({_f4(riskiest['mean_churn_probability'])}). Most value at risk: "
                       f"{costliest['segment']} "
                       f"({_usd(costliest['value_at_risk_usd'])} USD, "
                       f"{_pct(_share(costliest['value_at_risk_usd'], total_risk))} of the total).")]
    return _document("churn_by_segment", f"Churn by segment (week of {week})", "churn_by_segment", week, versions,
                     ["scoring/churn_by_segment"], [_table_source("churn_by_segment")], lines)


def at_risk_analysis(marts: MartResults, week: str, versions: Mapping[str, str]) -> Document:
    risk, total = marts.at_risk, marts.summary
    lines = [f"# At-risk customers (week of {week})", "",
             ("From the at_risk_customers mart: customers whose churn probability reaches the at-risk threshold and "
              "whose predicted lifetime value is in the top quartile, the ones worth a retention offer."), ""]
    if not risk["customers"]:
        why = ("churn is served by its naive baseline, which gives everyone one rate and singles out no one"
               if versions.get("churn_model") == BASELINE_VERSION else "no customer meets both conditions")
        lines += [f"No customer is on the at-risk list this week: {why}."]
    else:
        lines += _table(["figure", "value"], [
            ("customers at risk (on the list)", _count(risk["customers"])),
            ("share of all customers", _pct(_share(risk["customers"], total.get("customers")))),
            ("mean churn probability", _f4(risk["mean_churn_probability"])),
            ("lowest churn probability on the list", _f4(risk["min_churn_probability"])),
            ("lowest predicted LTV on the list (USD)", _usd(risk["min_predicted_ltv_usd"])),
            ("total predicted lifetime value, LTV (USD)", _usd(risk["predicted_ltv_usd"])),
            ("value at risk (USD)", _usd(risk["value_at_risk_usd"])),
            ("share of the week's value at risk",
             _pct(_share(risk["value_at_risk_usd"], total.get("total_value_at_risk_usd")))),
        ])
        methods = ", ".join(f"{m['method']} for {_count(m['customers'])}" for m in marts.at_risk_methods)
        lines += ["", "## Most common churn drivers", "",
                  (f"Each customer's three features that moved the churn log-odds most ({methods} customers). "
                   "A positive contribution raises the churn risk."), ""]
        lines += _table(["driver", "top driver for", "in the top 3 for", "raises risk for", "mean contribution"],
                        [(d["driver"], _count(d["top_driver"]), _count(d["in_top_3"]), _count(d["raises_risk"]),
                          f"{d['mean_contribution']:+.4f}") for d in marts.at_risk_drivers])
        lines += ["", "## By segment", ""]
        lines += _table(["segment", "customers", "mean churn probability", "value at risk (USD)"],
                        [(s["segment"], _count(s["customers"]), _f4(s["mean_churn_probability"]),
                          _usd(s["value_at_risk_usd"])) for s in marts.at_risk_segments])
        largest = marts.at_risk_segments[0]
        share = _pct(_share(largest["customers"], risk["customers"]))
        lines += ["", (f"By segment, most at-risk customers are in {largest['segment']}: "
                       f"{_count(largest['customers'])} of the {_count(risk['customers'])} ({share}).")]
        top = marts.at_risk_drivers[0] if marts.at_risk_drivers else None
        if top:
            lines += ["", (f"The most common driver is {top['driver']}, among the top three of "
                           f"{_count(top['in_top_3'])} of the {_count(risk['customers'])} customers.")]
    return _document("at_risk_analysis", f"At-risk customers (week of {week})", "at_risk_analysis", week, versions,
                     ["scoring/at_risk_customers", "scoring/weekly_prediction_summary"],
                     [_table_source("at_risk_customers"), _table_source("weekly_prediction_summary")], lines)


def high_engagement_analysis(marts: MartResults, week: str, versions: Mapping[str, str]) -> Document:
    high, total = marts.high_engagement, marts.summary
    lines = [f"# High-engagement customers (week of {week})", "",
             ("From the high_engagement_customers mart: customers whose predicted engagement is at least the "
              "high-engagement threshold, candidates for referral and creator programmes."), ""]
    if not high["customers"]:
        lines += ["No customer reaches the high-engagement threshold this week."]
    else:
        lines += _table(["figure", "value"], [
            ("customers", _count(high["customers"])),
            ("share of all customers", _pct(_share(high["customers"], total.get("customers")))),
            ("mean predicted engagement", _f4(high["mean_predicted_engagement"])),
            ("lowest predicted engagement on the list", _f4(high["min_predicted_engagement"])),
            ("mean observed engagement", _f4(high["mean_observed_engagement"])),
            ("mean churn probability", _f4(high["mean_churn_probability"])),
            ("predicted lifetime value (USD)", _usd(high["predicted_ltv_usd"])),
            ("mean predicted lifetime value (USD)", _usd(high["mean_predicted_ltv_usd"])),
        ])
        lines += ["", "## By segment", ""]
        lines += _table(["segment", "customers", "mean churn probability", "predicted LTV (USD)"],
                        [(s["segment"], _count(s["customers"]), _f4(s["mean_churn_probability"]),
                          _usd(s["predicted_ltv_usd"])) for s in marts.high_engagement_segments])
        lines += ["", "## First recommended content category", ""]
        lines += _table(["category", "customers"],
                        [(c["category"], _count(c["customers"])) for c in marts.high_engagement_categories])
    return _document("high_engagement_analysis", f"High-engagement customers (week of {week})",
                     "high_engagement_analysis", week, versions,
                     ["scoring/high_engagement_customers", "scoring/weekly_prediction_summary"],
                     [_table_source("high_engagement_customers"), _table_source("weekly_prediction_summary")], lines)


# The week's key figures (in the manifest): what the next week's week-over-week document compares.
# key → (label, kind); kind picks the format.
HEADLINE = {
    "customers": ("customers scored", "count"),
    "mean_predicted_engagement": ("mean predicted engagement", "ratio"),
    "high_engagement_customers": ("high-engagement customers", "count"),
    "mean_churn_probability": ("mean churn probability", "ratio"),
    "expected_churners": ("expected churners", "decimal"),
    "high_churn_risk_customers": ("customers with a churn probability of at least 0.5", "count"),
    "at_risk_customers": ("customers on the at-risk list", "count"),
    "at_risk_value_at_risk_usd": ("value at risk on the at-risk list (USD)", "usd"),
    "total_predicted_ltv_usd": ("total predicted lifetime value (USD)", "usd"),
    "total_value_at_risk_usd": ("total value at risk (USD)", "usd"),
    "anomaly_share": ("share flagged as anomalies", "share"),
}
_FORMAT = {"count": _count, "ratio": _f4, "decimal": lambda v: "–" if _missing(v) else f"{v:,.1f}",
           "usd": _usd, "share": _pct}


def _change(kind: str, now: Any, before: Any) -> tuple[str, str]:
    if _missing(now) or _missing(before):
        return "–", "–"
    delta = now - before
    text = {"count": f"{round(delta):+,}", "ratio": f"{delta:+.4f}", "decimal": f"{delta:+,.1f}",
            "usd": f"{delta:+,.2f}", "share": f"{100 * delta:+.2f} pp"}[kind]
    return text, (f"{delta / before:+.2%}" if before else "–")


def _round(value: Any) -> Any:
    """Ten significant digits: the figures stay the same bytes whatever order a sum was taken in."""
    return float(f"{value:.10g}") if isinstance(value, float) else value


def week_figures(marts: MartResults, models: Mapping[str, ModelResult]) -> dict[str, Any]:
    summary = marts.summary
    headline = {key: summary.get(key) for key in HEADLINE if key in summary}
    headline["at_risk_customers"] = marts.at_risk["customers"]
    headline["at_risk_value_at_risk_usd"] = marts.at_risk["value_at_risk_usd"] or 0.0
    headline = {k: (round(v) if HEADLINE[k][1] == "count" and not _missing(v) else _round(v))
                for k, v in headline.items()}
    figures: dict[str, Any] = {"headline": headline}
    figures["models"] = {
        name: {"serving_version": r.serving_version, "reported_version": r.reported.version if r.reported else None,
               "primary_metric": MODELS[name],
               "value": _round((r.reported.report.get("test") or {}).get(MODELS[name])) if r.reported else None}
        for name, r in models.items()}
    figures["segments"] = {row["segment"]: {"customers": row["customers"],
                                            "mean_churn_probability": _round(row["mean_churn_probability"])}
                           for row in marts.churn_by_segment}
    return figures


def weekly_summary(marts: MartResults, models: Mapping[str, ModelResult], week: str,
                   versions: Mapping[str, str]) -> Document:
    figures = week_figures(marts, models)["headline"]
    lines = [f"# Weekly prediction summary (week of {week})", "",
             ("The week's headline figures from the weekly_prediction_summary, weekly_summary and at_risk_customers "
              "marts."), ""]
    shown = {key: _FORMAT[kind](figures.get(key)) for key, (_, kind) in HEADLINE.items()}
    trend = marts.trend
    lines += [(f"This week {shown['customers']} customers were scored: {shown['at_risk_customers']} customers on the "
               f"at-risk list, {shown['high_engagement_customers']} high-engagement customers, "
               f"{shown['anomaly_share']} flagged as anomalies."), ""]
    observed = ("" if not trend else "; no churn outcome is known yet" if _missing(trend.get("observed_churn_rate"))
                else (f"; observed churn rate {_f4(trend['observed_churn_rate'])} over the "
                      f"{_count(trend.get('customers_with_known_outcome'))} customers whose outcome is known"))
    lines += [(f"Churn this week: mean churn probability {shown['mean_churn_probability']}, "
               f"{shown['expected_churners']} expected churners{observed}."), ""]
    distribution = ("" if not trend else
                    (f", 10th percentile {_f4(trend.get('p10_predicted_engagement'))}, median "
                     f"{_f4(trend.get('p50_predicted_engagement'))}, 90th percentile "
                     f"{_f4(trend.get('p90_predicted_engagement'))}"))
    lines += [f"Predicted engagement this week: mean {shown['mean_predicted_engagement']}{distribution}.", ""]
    lines += _table(["figure", "value"], [(label, _FORMAT[kind](figures.get(key)))
                                          for key, (label, kind) in HEADLINE.items()])
    lines += ["", "## Model versions that scored this week's predictions", ""]
    lines += _table(["model", "serving version", "trained for week"], [
        (n, r.serving_version, (r.serving.week or "–") if r.serving else "naive baseline")
        for n, r in models.items()])
    on_baseline = [n for n, r in models.items() if r.serving_version == BASELINE_VERSION]
    if on_baseline:
        lines += ["", "Served by their naive baseline (no champion): " + ", ".join(on_baseline) + "."]
    return _document("weekly_summary", f"Weekly prediction summary (week of {week})", "weekly_summary", week,
                     versions, ["scoring/weekly_prediction_summary", "scoring/weekly_summary",
                                "scoring/at_risk_customers", "scoring/predictions_final"],
                     [_table_source("weekly_prediction_summary"), _table_source("weekly_summary"),
                      _table_source("at_risk_customers"), _table_source("predictions_final")], lines)


def previous_figures(lake: LakeLike, week: str) -> tuple[str | None, dict | None]:
    """The most recent earlier week in the knowledge base, and its key figures."""
    earlier = [w for w in available_weeks(lake) if w < week]
    if not earlier:
        return None, None
    return earlier[-1], read_manifest(lake, earlier[-1]).get("figures")


def week_over_week(figures: Mapping[str, Any], previous_week: str | None, previous: Mapping[str, Any] | None,
                   week: str, versions: Mapping[str, str]) -> Document:
    previous = previous or {}
    lines = [f"# Week-over-week changes (week of {week})", ""]
    if previous_week is None:
        lines += [(f"First week: the knowledge base holds no week before {week} to compare with. "
                   "The figures below are this week's alone."), ""]
    else:
        gap = (dt.date.fromisoformat(week) - dt.date.fromisoformat(previous_week)).days // 7
        lines += [f"Compared with the week of {previous_week}"
                  + (" (the previous week)." if gap == 1 else f", the latest earlier week in the knowledge base "
                                                               f"({gap} weeks before).")
                  + " Model metrics are each week's test split, so part of a change is the data's.", ""]
    now_h, before_h = figures["headline"], previous.get("headline", {})
    lines += ["## Headline figures", ""]
    rows = []
    for key, (label, kind) in HEADLINE.items():
        change, relative = _change(kind, now_h.get(key), before_h.get(key))
        rows.append((label, _FORMAT[kind](before_h.get(key)), _FORMAT[kind](now_h.get(key)), change, relative))
    lines += _table(["figure", "previous week", "this week", "change", "relative change"], rows)

    now_m, before_m = figures["models"], previous.get("models", {})
    lines += ["", "## Model metrics (primary metric, test split)", ""]
    rows = []
    for name, entry in now_m.items():
        before = before_m.get(name, {})
        same_metric = before.get("primary_metric") == entry["primary_metric"]
        change, relative = _change("ratio", entry["value"], before.get("value") if same_metric else None)
        rows.append((name, entry["primary_metric"], _f4(before.get("value") if same_metric else None),
                     _f4(entry["value"]), change, relative))
    lines += _table(["model", "metric", "previous week", "this week", "change", "relative change"], rows)

    lines += ["", "## Champion changes (the version that scored each week)", ""]
    changed = []
    rows = []
    for name, entry in now_m.items():
        before = before_m.get(name, {}).get("serving_version")
        status = "first week" if previous_week is None else (
            "unchanged" if before == entry["serving_version"] else "changed")
        if status == "changed":
            changed.append(f"{name} ({before or 'none'} → {entry['serving_version']})")
        rows.append((name, before or "–", entry["serving_version"], status))
    lines += _table(["model", "previous week", "this week", "status"], rows)
    if previous_week is not None:
        lines += ["", (f"{len(changed)} champion change(s): " + "; ".join(changed) + ".") if changed
                  else "No champion changed."]

    now_s, before_s = figures["segments"], previous.get("segments", {})
    lines += ["", "## Segments", ""]
    rows = []
    for segment in sorted(set(now_s) | set(before_s), key=lambda s: (-(now_s.get(s, {}).get("customers") or 0), s)):
        n, b = now_s.get(segment, {}), before_s.get(segment, {})
        rows.append((segment, _count(b.get("customers")), _count(n.get("customers")),
                     _change("count", n.get("customers"), b.get("customers"))[0],
                     _f4(b.get("mean_churn_probability")), _f4(n.get("mean_churn_probability")),
                     _change("ratio", n.get("mean_churn_probability"), b.get("mean_churn_probability"))[0]))
    lines += _table(["segment", "customers previous week", "customers this week", "change",
                     "mean churn probability previous week", "mean churn probability this week", "change"], rows)
    sources = [_table_source("weekly_prediction_summary"), _table_source("churn_by_segment")]
    if previous_week is not None:
        sources.append(f"lake:{manifest_key(previous_week)}")
    return _document("week_over_week", f"Week-over-week changes (week of {week})", "week_over_week", week, versions,
                     ["scoring/weekly_prediction_summary", "scoring/churn_by_segment",
                      *(f"models/{n}" for n in MODELS), "knowledge_base/kb_documents"],
                     sources, lines, previous_week=previous_week)


ROLE_MEANING = {
    "id": "the customer key",
    "week": "the snapshot week",
    "protected": "measured for fairness, never a model input",
    "feature": "a numeric model input",
    "categorical": "a categorical model input",
    "target": "what a model predicts; never an input",
    "split": "train / valid / test, from a hash of the customer id",
    "key": "the customer's hash: capped training samples and scoring shards, never a model input",
}


def _column_meta(column: Mapping[str, Any]) -> dict[str, Any]:
    return {**((column.get("config") or {}).get("meta") or {}), **(column.get("meta") or {})}


def _description(node: Mapping[str, Any], column: str) -> str:
    return (node["columns"].get(column) or {}).get("description") or ""


def _range_text(meta: Mapping[str, Any]) -> str:
    if "range" not in meta:
        return "–"
    low, high = meta["range"]
    return f"[{'…' if low is None else f'{low:g}'}, {'…' if high is None else f'{high:g}'}]"


def data_dictionary(manifest_path: Path, marts: Marts, week: str, versions: Mapping[str, str]) -> Document:
    manifest = json.loads(Path(manifest_path).read_text())
    project = manifest.get("metadata", {}).get("project_name")
    models = [n for n in manifest["nodes"].values()
              if n["resource_type"] == "model" and (project is None or n.get("package_name") == project)]
    models.sort(key=lambda n: (n["name"] != MODEL_INPUT, "scoring" in n.get("tags", []),
                               n["name"] != "predictions_final", n["name"]))
    by_name = {n["name"]: n for n in models}
    documented: dict[str, tuple[str, str]] = {}  # column → (description, the model that documents it)
    for node in models:
        for name, column in node["columns"].items():
            if column.get("description") and name not in documented:
                documented[name] = (column["description"], node["name"])
    lines = [f"# Data dictionary (week of {week})", "",
             ("Generated from the dbt project's manifest (model and column descriptions, each column's `meta.role` "
              "and documented `meta.range`) and the warehouse's tables. Training reads the roles of "
              f"{MODEL_INPUT}: add a feature with SQL + YAML and the models pick it up. A column a model passes "
              "through unchanged carries the description of the model that documents it, named in brackets; one "
              "described the same way as in a model above says \"as in\" that model."), "",
             "## Roles", ""]
    lines += _table(["role", "meaning"], [(role, ROLE_MEANING.get(role, "")) for role in ROLES])
    asset_keys, listed, undocumented = [], {}, 0
    for node in models:
        group = "scoring" if "scoring" in node.get("tags", []) else "features"
        asset_keys.append(f"{group}/{node['name']}")
        live = marts.columns(node["name"])
        names = live + [c for c in node["columns"] if c not in live]
        lines += ["", f"## {node['name']} ({group}, {node.get('config', {}).get('materialized', 'model')})", "",
                  node.get("description") or "No description.", ""]
        # A mart that carries every column of a model above lists only what it adds or describes otherwise.
        parents = [(len(cols), other) for other, cols in listed.items() if len(cols) >= 5 and set(cols) <= set(live)]
        listed[node["name"]] = live
        if parents:
            parent = max(parents)[1]
            names = [c for c in names if c not in listed[parent]
                     or _description(node, c) not in ("", _description(by_name[parent], c))]
            lines += [f"Every column of {parent}" + (", plus:" if names else "."), ""]
            if not names:
                continue
        if group == "scoring" and "customer_id" not in live:
            # A mart of figures (per segment, per week): its columns by name. Their descriptions would repeat
            # the analyses' figure labels and draw questions about figures here; dbt's docs site has them.
            lines += [f"Columns: {', '.join(names)} (each described in dbt's documentation site, `make docs`)."]
            continue
        rows = []
        for name in names:
            column = node["columns"].get(name, {})
            meta = _column_meta(column)
            if column.get("description") and documented.get(name, ("", node["name"]))[1] != node["name"] \
                    and column["description"] == documented[name][0]:
                description = f"as in {documented[name][1]}"  # said once, where it is first documented
            elif column.get("description"):
                description = column["description"]
            elif name in documented:
                description = f"{documented[name][0]} [{documented[name][1]}]"
            else:
                description = "(undocumented)"
            if name not in live:
                description += " (documented, but not in the warehouse table)"
            undocumented += description == "(undocumented)"
            rows.append((name, meta.get("role", "–"), _range_text(meta), description))
        lines += _table(["column", "role", "documented range", "description"], rows)
    if undocumented:
        lines += ["", f"{undocumented} column(s) above have no description in the dbt YAML yet."]
    sources = sorted(manifest.get("sources", {}).values(), key=lambda s: s["name"])
    if sources:
        lines += ["", "## Sources (the lake, written by Python assets)", ""]
        lines += [f"- {s['name']}: {s.get('description') or 'No description.'}" for s in sources]
    return _document("data_dictionary", f"Data dictionary (week of {week})", "data_dictionary", week, versions,
                     asset_keys, ["dbt:manifest.json", *(_table_source(n["name"]) for n in models)], lines)


# ---------------------------------------------------------------------------------------------
# The week


def _week(week: str) -> str:
    return dt.date.fromisoformat(week).isoformat()


def build_week(lake: LakeLike, week: str, marts: Marts, manifest_path: Path | str) -> KnowledgeBaseWeek:
    """Every document of ``week`` from the registry in ``lake``, the marts and the dbt manifest."""
    week = _week(week)
    results = read_marts(marts, week)
    models = read_registry(lake, week, results.serving_versions)
    versions = results.serving_versions
    figures = week_figures(results, models)
    previous_week, previous = previous_figures(lake, week)
    documents = [
        *(model_card(models[name], week, versions) for name in MODELS),
        feature_importance(models, week, versions),
        segment_profiles(models["segment_model"], results, week, versions),
        churn_by_segment(results, week, versions),
        at_risk_analysis(results, week, versions),
        high_engagement_analysis(results, week, versions),
        weekly_summary(results, models, week, versions),
        week_over_week(figures, previous_week, previous, week, versions),
        data_dictionary(Path(manifest_path), marts, week, versions),
    ]
    return KnowledgeBaseWeek(week, documents, figures, dict(versions), previous_week)


def build_documents(lake: LakeLike, week: str, marts: Marts, manifest_path: Path | str) -> list[Document]:
    return build_week(lake, week, marts, manifest_path).documents


@dataclass(frozen=True)
class WrittenWeek:
    week: str
    manifest: dict = field(repr=False)

    @property
    def doc_ids(self) -> list[str]:
        return [d["doc_id"] for d in self.manifest["documents"]]

    @property
    def words(self) -> int:
        return sum(d["words"] for d in self.manifest["documents"])


def generate(lake: LakeLike, week: str, marts: Marts, manifest_path: Path | str) -> WrittenWeek:
    """Build the week's documents and write them to the lake."""
    kb_week = build_week(lake, week, marts, manifest_path)
    return WrittenWeek(kb_week.week, write_week(lake, kb_week))
