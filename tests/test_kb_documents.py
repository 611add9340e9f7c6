"""The knowledge base's documents, generated from two real weeks of the whole graph on a small
snapshot: every figure read back from the markdown tables equals the registry's metrics.json or
the dbt marts; the same week regenerated gives the same bytes; the second week says what changed."""

import hashlib
import json
import math
import re
import subprocess
import sys
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest
import yaml

from engagement_dagster.core.kb import documents
from engagement_dagster.core.ml.feature_roles import MODEL_INPUT
from engagement_dagster.core.ml.training import MODEL_KINDS
from engagement_dagster.definitions import defs
from engagement_dagster.defs.dbt.project import engagement_dbt
from engagement_dagster.defs.kb.assets import KB_DOCUMENTS, kb_documents
from engagement_dagster.defs.resources import build_resources
from engagement_dagster.defs.resources.lake import LocalLake

WEEK1, WEEK2 = "2026-11-09", "2026-11-16"
N = 4_000
VERSION_COLUMNS = ", ".join(f"{name}_version" for name in MODEL_KINDS)


def _query(root, sql):
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        frame = con.sql(sql).df()
    return frame.to_dict("records")


def _marts(root, week) -> dict:
    """What the marts hold for ``week`` (they keep every week: each query reads that week's rows)."""
    def q(sql):
        return _query(root, sql.replace("{week}", f"snapshot_week = date '{week}'"))

    return {
        "summary": q("select * from weekly_prediction_summary where {week}")[0],
        "versions": q(f"select distinct {VERSION_COLUMNS} from predictions_final where {{week}}")[0],
        "churn_by_segment": {r["segment"]: r for r in q("select * from churn_by_segment where {week}")},
        "at_risk": q("select count(*) as customers, sum(value_at_risk_usd) as value_at_risk_usd, "
                     "sum(predicted_lifetime_value_usd) as predicted_ltv_usd from at_risk_customers where {week}")[0],
        "at_risk_drivers": {r["driver"]: r for r in q(
            "select driver, count(*) as in_top_3, sum(top) as top_driver from ("
            "select churn_driver_1 as driver, 1 as top from at_risk_customers where {week} union all "
            "select churn_driver_2, 0 from at_risk_customers where {week} union all "
            "select churn_driver_3, 0 from at_risk_customers where {week}) group by driver")},
        "high": q("select count(*) as customers, avg(predicted_engagement_score) as mean_engagement, "
                  "sum(predicted_lifetime_value_usd) as predicted_ltv_usd from high_engagement_customers "
                  "where {week}")[0],
        "model_input_columns": [r["column_name"] for r in q(
            "select column_name from information_schema.columns "
            f"where table_name = '{MODEL_INPUT}' order by ordinal_position")],
    }


def _kb_files(lake, week) -> dict[str, bytes]:
    return {key: lake.read_bytes(key) for key in lake.list_keys(documents.week_prefix(week))}


@pytest.fixture(scope="module")
def weeks(tmp_path_factory):
    """Two weeks of the whole graph, the knowledge base included, in a lake of their own; the
    marts of week 1 are read before week 2 is built, and again after (the marts keep every week)."""
    root = tmp_path_factory.mktemp("kb_lake")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENGAGEMENT_LAKE_DIR", str(root))
        patch.setenv("ENGAGEMENT_ENV", "local")
        resources = build_resources("local")
        lake = LocalLake(root=str(root))

        def refresh(week):
            result = dg.materialize(
                [*defs.assets, kb_documents], partition_key=week, resources=resources, raise_on_error=False,
                run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": N}}}})
            assert result.success
            return result

        first = refresh(WEEK1)
        files1 = _kb_files(lake, WEEK1)
        marts1 = _marts(root, WEEK1)
        champions1 = {n: json.loads(lake.read_bytes(f"models/{n}/champion.json"))["version"] for n in MODEL_KINDS}
        # Regenerated, through the asset and through the plain library: the same bytes.
        assert dg.materialize([kb_documents], partition_key=WEEK1, resources=resources).success
        files1_asset = _kb_files(lake, WEEK1)
        marts = documents.Marts(query=resources["warehouse"].query, schema="main")
        documents.generate(lake, WEEK1, marts, engagement_dbt.manifest_path)
        files1_plain = _kb_files(lake, WEEK1)

        second = refresh(WEEK2)
        yield SimpleNamespace(root=root, lake=lake, marts=marts, first=first, second=second, files1=files1,
                              files1_asset=files1_asset, files1_plain=files1_plain, marts1=marts1,
                              champions1=champions1, marts2=_marts(root, WEEK2), files2=_kb_files(lake, WEEK2),
                              marts1_later=_marts(root, WEEK1))


# --- reading the markdown back: tables by their heading, numbers by their printed precision


def _tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Each markdown table under the heading above it, as rows of {column header: cell}."""
    out, heading, lines = {}, "", markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = _cells(line)
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]), strict=True)))
                i += 1
            assert heading not in out, f"two tables under {heading!r}"
            out[heading] = rows
            continue
        i += 1
    return out


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def _number(cell: str) -> float:
    return float(cell.replace(",", "").replace("%", "").replace(" pp", ""))


def _same(cell: str, value) -> bool:
    """The cell shows ``value`` to the precision it is printed with ("–" for a missing value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == "–"
    if cell == "–":
        return False
    text = cell.replace(",", "")
    scale = 1.0
    for unit in ("%", " pp"):  # a percent, or a change in percentage points
        if text.endswith(unit):
            text, scale = text.removesuffix(unit), 100.0
    if "e" in text:
        return math.isclose(float(text), value * scale, rel_tol=5e-4)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text) - value * scale) <= 0.5 * 10 ** -decimals + 1e-9


def _by(rows: list[dict], column: str) -> dict[str, dict]:
    return {row[column]: row for row in rows}


def _doc(files: dict[str, bytes], week: str, doc_id: str) -> tuple[dict, str, dict]:
    front, body = documents.parse_document(files[documents.document_key(week, doc_id)].decode())
    return front, body, _tables(body)


# --- the tests


def test_the_plain_module_imports_no_dagster():
    code = ("import sys, engagement_dagster.core.kb.documents, engagement_dagster.core.kb; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_dbt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_kb_model_list_is_training_s():
    assert documents.MODELS == {name: kind.primary_metric for name, kind in MODEL_KINDS.items()}
    assert all(documents.HIGHER_IS_BETTER[kind.primary_metric] == kind.higher_is_better
               for kind in MODEL_KINDS.values() if kind.primary_metric in documents.HIGHER_IS_BETTER)


def test_the_asset_depends_on_the_models_and_marts_it_reads():
    keys = {key for a in defs.assets for key in a.keys}
    deps = {dep.asset_key for spec in kb_documents.specs for dep in spec.deps}
    assert deps <= keys  # every dependency is a real asset of the graph, none an orphan
    read = [*(["models", n] for n in MODEL_KINDS), *(["scoring", m] for m in documents.MARTS),
            ["scoring", "customer_predictions"]]
    assert {dg.AssetKey(path) for path in read} <= deps
    assert kb_documents.group_names_by_key[KB_DOCUMENTS] == "knowledge_base"


def test_the_week_s_documents_are_in_the_lake_with_front_matter_and_a_manifest(weeks):
    manifest = json.loads(weeks.files1[documents.manifest_key(WEEK1)])
    ids = [d["doc_id"] for d in manifest["documents"]]
    assert ids == [*(f"model_card_{n}" for n in documents.MODELS), "feature_importance", "segment_profiles",
                   "churn_by_segment", "at_risk_analysis", "high_engagement_analysis", "weekly_summary",
                   "week_over_week", "data_dictionary"]
    assert set(weeks.files1) == {documents.manifest_key(WEEK1), *(documents.document_key(WEEK1, i) for i in ids)}
    for entry in manifest["documents"]:
        data = weeks.files1[entry["key"]]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        text = data.decode()
        assert text.startswith("---\n")
        front = yaml.safe_load(text[4:].split("\n---\n")[0])  # real YAML, and what parse_document reads
        assert front == documents.parse_document(text)[0]
        assert front["doc_id"] == entry["doc_id"] and front["title"] == entry["title"]
        assert front["snapshot_week"] == WEEK1 and front["source_assets"]
        assert front["model_versions"] == {n: weeks.marts1["versions"][f"{n}_version"] for n in MODEL_KINDS}
        assert "generated_at" not in front
    assert manifest["model_versions"] == weeks.champions1  # first week: every first version promoted and served
    assert documents.available_weeks(weeks.lake) == [WEEK1, WEEK2]

    event = next(e for e in weeks.first.get_asset_materialization_events() if e.asset_key == KB_DOCUMENTS)
    metadata = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    assert metadata["documents"] == len(ids) and metadata["doc_ids"] == ", ".join(ids)
    assert metadata["total_words"] == sum(d["words"] for d in manifest["documents"]) > 1000
    assert metadata["path"] == str(weeks.root / "kb" / f"snapshot_week={WEEK1}")


def test_regenerating_a_week_gives_identical_bytes(weeks):
    assert weeks.files1_asset == weeks.files1
    assert weeks.files1_plain == weeks.files1
    # ... and a later week leaves it as it was, readable by week.
    assert _kb_files(weeks.lake, WEEK1) == weeks.files1


def test_model_cards_state_the_registry_s_figures(weeks):
    for name in MODEL_KINDS:
        front, body, tables = _doc(weeks.files1, WEEK1, f"model_card_{name}")
        version = front["reported_version"]
        assert version == weeks.champions1[name] == front["serving_version"] and front["promotion"] == "PROMOTED"
        report = json.loads(weeks.lake.read_bytes(f"models/{name}/{version}/metrics.json"))
        versions = _by(tables["Versions"], "role")
        assert [r["version"] for r in versions.values()] == [version, version]
        assert all(r["trained for week"] == WEEK1 for r in versions.values())

        metrics = _by(next(rows for h, rows in tables.items() if h.startswith("Test metrics")), "metric")
        assert list(metrics) == list(report["test"])
        ceiling = report["oracle_ceiling"] or {}
        for metric, value in report["test"].items():
            row = metrics[metric]
            assert _same(row["model"], value), (name, metric, row, value)
            assert _same(row["naive baseline"], report["baseline"][metric]), (name, metric)
            assert _same(row["oracle ceiling"], ceiling.get(metric)), (name, metric)
            assert row["champion on the same rows"] == "–"  # a first version has no champion to meet
        if report.get("fairness"):
            gaps = _by(tables["Fairness gaps (test split)"], "gap")
            assert set(gaps) == set(report["fairness"])
            assert all(_same(gaps[k]["value"], v) for k, v in report["fairness"].items())
        if report.get("importance_mean_abs_shap"):
            shap = tables["Top features by mean |SHAP| (exact TreeSHAP on a test sample)"]
            assert [r["feature"] for r in shap] == list(report["importance_mean_abs_shap"])
            assert all(_same(r["mean abs SHAP"], report["importance_mean_abs_shap"][r["feature"]]) for r in shap)

    _, body, tables = _doc(weeks.files1, WEEK1, "model_card_churn_model")
    report = json.loads(weeks.lake.read_bytes(f"models/churn_model/{weeks.champions1['churn_model']}/metrics.json"))
    calibration = _by(tables["Calibration (churn probability, test split)"], "measure")
    assert set(calibration) == {"ece", "brier"}
    for measure, row in calibration.items():
        assert _same(row["model"], report["test"][measure]) and _same(row["oracle ceiling"],
                                                                      report["oracle_ceiling"][measure])
    lift = tables["Lift by predicted-risk decile (test split, highest risk first)"]
    assert [int(r["decile"]) for r in lift] == list(range(1, 11))
    assert all(_same(r["lift"], v) for r, v in zip(lift, report["lift_by_decile"], strict=True))
    assert "Promotion gate: PROMOTED: first version: auc" in body


def test_feature_importance_is_one_table_of_the_models_shap(weeks):
    front, _, tables = _doc(weeks.files1, WEEK1, "feature_importance")
    table = tables["Mean |SHAP| by feature and model"]
    models = [c for c in table[0] if c in MODEL_KINDS]
    assert models == ["engagement_model", "churn_model", "ltv_model", "content_recommender"]
    assert front["reported_versions"] == {n: weeks.champions1[n] for n in models}
    importance = {n: json.loads(weeks.lake.read_bytes(f"models/{n}/{weeks.champions1[n]}/metrics.json"))[
        "importance_mean_abs_shap"] for n in models}
    assert {r["feature"] for r in table} == set().union(*importance.values())
    for row in table:
        for name in models:
            assert _same(row[name], importance[name].get(row["feature"])), (row, name)
        assert int(row["best rank"]) == min(list(importance[n]).index(row["feature"]) + 1
                                            for n in models if row["feature"] in importance[n])


def test_mart_analyses_state_the_marts_figures(weeks):
    marts = weeks.marts1
    summary = marts["summary"]

    _, _, tables = _doc(weeks.files1, WEEK1, "churn_by_segment")
    rows = _by(tables["Churn by segment (week of 2026-11-09)"], "segment")
    assert set(rows) == set(marts["churn_by_segment"]) and 3 <= len(rows) <= 8
    for segment, mart in marts["churn_by_segment"].items():
        row = rows[segment]
        for column, mart_column in [("customers", "customers"), ("mean churn probability", "mean_churn_probability"),
                                    ("expected churners", "expected_churners"),
                                    ("observed churn rate", "observed_churn_rate"),
                                    ("mean predicted LTV (USD)", "mean_predicted_ltv_usd"),
                                    ("value at risk (USD)", "value_at_risk_usd")]:
            assert _same(row[column], mart[mart_column]), (segment, column)
    assert sum(_number(r["customers"]) for r in rows.values()) == N

    _, body, tables = _doc(weeks.files1, WEEK1, "at_risk_analysis")
    risk = marts["at_risk"]
    assert risk["customers"] > 0, "a 4,000-customer week has someone at risk"
    figures = {r["figure"]: r["value"] for r in tables["At-risk customers (week of 2026-11-09)"]}
    assert _same(figures["customers at risk (on the list)"], risk["customers"])
    assert _same(figures["value at risk (USD)"], risk["value_at_risk_usd"])
    assert _same(figures["total predicted lifetime value, LTV (USD)"], risk["predicted_ltv_usd"])
    assert _same(figures["share of all customers"], risk["customers"] / N)
    drivers = _by(tables["Most common churn drivers"], "driver")
    assert set(drivers) == set(marts["at_risk_drivers"])
    for driver, counts in marts["at_risk_drivers"].items():
        assert _same(drivers[driver]["in the top 3 for"], counts["in_top_3"])
        assert _same(drivers[driver]["top driver for"], counts["top_driver"])
    order = [r["driver"] for r in tables["Most common churn drivers"]]
    assert order == sorted(marts["at_risk_drivers"], key=lambda d: (-marts["at_risk_drivers"][d]["in_top_3"], d))
    assert sum(_number(r["customers"]) for r in tables["By segment"]) == risk["customers"]
    largest = max(tables["By segment"], key=lambda r: _number(r["customers"]))
    assert f"most at-risk customers are in {largest['segment']}: {largest['customers']} of the" in body

    _, _, tables = _doc(weeks.files1, WEEK1, "high_engagement_analysis")
    figures = {r["figure"]: r["value"] for r in tables["High-engagement customers (week of 2026-11-09)"]}
    assert _same(figures["customers"], marts["high"]["customers"])
    assert _same(figures["customers"], summary["high_engagement_customers"])
    assert _same(figures["mean predicted engagement"], marts["high"]["mean_engagement"])
    assert _same(figures["predicted lifetime value (USD)"], marts["high"]["predicted_ltv_usd"])

    _, body, tables = _doc(weeks.files1, WEEK1, "weekly_summary")
    figures = {r["figure"]: r["value"] for r in tables["Weekly prediction summary (week of 2026-11-09)"]}
    for key, (label, _) in documents.HEADLINE.items():
        expected = summary.get(key, {"at_risk_customers": risk["customers"],
                                     "at_risk_value_at_risk_usd": risk["value_at_risk_usd"]}.get(key))
        assert _same(figures[label], expected), (key, figures[label], expected)
    # ... and the weekly_summary mart's outcomes and distribution of predicted engagement
    trend = _query(weeks.root, f"select * from weekly_summary where snapshot_week = date '{WEEK1}'")[0]
    assert (f"observed churn rate {trend['observed_churn_rate']:.4f} over the "
            f"{trend['customers_with_known_outcome']:,} customers whose outcome is known") in body
    assert (f"10th percentile {trend['p10_predicted_engagement']:.4f}, median {trend['p50_predicted_engagement']:.4f}, "
            f"90th percentile {trend['p90_predicted_engagement']:.4f}") in body

    # segment profiles: the serving segment model's profiles beside this week's churn_by_segment
    front, _, tables = _doc(weeks.files1, WEEK1, "segment_profiles")
    profiles = json.loads(weeks.lake.read_bytes(
        f"models/segment_model/{front['segment_model_version']}/metrics.json"))["segments"]
    shown = _by(tables["Segment profiles (week of 2026-11-09)"], "segment")
    z = _by(tables["Profiles (centroid, standard deviations from the training mean)"], "segment")
    for profile in profiles:
        assert _same(shown[profile["name"]]["share of training rows"], profile["share"])
        assert _same(shown[profile["name"]]["customers"], marts["churn_by_segment"][profile["name"]]["customers"])
        assert all(_same(z[profile["name"]][d], v) for d, v in profile["profile_z"].items())


def test_the_data_dictionary_lists_every_model_input_column_with_its_role(weeks):
    from engagement_dagster.core.ml.feature_roles import read_roles

    _, _, tables = _doc(weeks.files1, WEEK1, "data_dictionary")
    rows = _by(tables[f"{MODEL_INPUT} (features, table)"], "column")
    assert list(rows) == weeks.marts1["model_input_columns"]
    roles = read_roles(engagement_dbt.manifest_path)
    expected = {roles.id: "id", roles.split: "split", **{c: "feature" for c in roles.features},
                **{c: "categorical" for c in roles.categoricals}, **{c: "target" for c in roles.targets},
                **{c: "protected" for c in roles.protected}, **({roles.key: "key"} if roles.key else {})}
    for column, role in expected.items():
        assert rows[column]["role"] == role, column
    assert {r["role"] for r in rows.values()} <= set(documents.ROLE_MEANING)
    assert all(r["description"] != "(undocumented)" for r in rows.values())
    assert rows["tenure_months"]["documented range"] == "[0, …]"
    # every column of the marts is described: a customer-level mart's in a table, a mart of figures by name
    _, body, tables = _doc(weeks.files1, WEEK1, "data_dictionary")
    final = _by(tables["predictions_final (scoring, incremental)"], "column")
    assert final["churn_driver_1_direction"]["description"].startswith("'raises churn risk' or 'lowers churn risk'")
    assert "(undocumented)" not in body.split("## predictions_final")[1].split("## Sources")[0]
    assert "Columns: customers, mean_predicted_engagement, mean_churn_probability" in body


def test_a_second_week_says_what_changed(weeks):
    first_front, first_body, _ = _doc(weeks.files1, WEEK1, "week_over_week")
    assert first_front["previous_week"] is None and "First week" in first_body

    front, body, tables = _doc(weeks.files2, WEEK2, "week_over_week")
    assert front["previous_week"] == WEEK1 and "(the previous week)" in body
    headline = _by(tables["Headline figures"], "figure")
    before, now = weeks.marts1["summary"], weeks.marts2["summary"]
    for key in ("customers", "mean_churn_probability", "high_engagement_customers", "total_value_at_risk_usd",
                "anomaly_share"):
        row = headline[documents.HEADLINE[key][0]]
        assert _same(row["previous week"], before[key]) and _same(row["this week"], now[key]), key
        assert _same(row["change"], now[key] - before[key]), key
    row = headline[documents.HEADLINE["at_risk_customers"][0]]
    assert _same(row["previous week"], weeks.marts1["at_risk"]["customers"])
    assert _same(row["this week"], weeks.marts2["at_risk"]["customers"])

    metrics = _by(tables["Model metrics (primary metric, test split)"], "model")
    manifest2 = json.loads(weeks.files2[documents.manifest_key(WEEK2)])
    for name, kind in MODEL_KINDS.items():
        old = json.loads(weeks.lake.read_bytes(f"models/{name}/{weeks.champions1[name]}/metrics.json"))
        new_version = manifest2["figures"]["models"][name]["reported_version"]
        new = json.loads(weeks.lake.read_bytes(f"models/{name}/{new_version}/metrics.json"))
        metric = kind.primary_metric
        assert metrics[name]["metric"] == metric
        assert _same(metrics[name]["previous week"], old["test"][metric])
        assert _same(metrics[name]["this week"], new["test"][metric])
        assert _same(metrics[name]["change"], new["test"][metric] - old["test"][metric])

    champions = _by(tables["Champion changes (the version that scored each week)"], "model")
    for name in MODEL_KINDS:
        was, now_serving = weeks.marts1["versions"][f"{name}_version"], weeks.marts2["versions"][f"{name}_version"]
        assert (champions[name]["previous week"], champions[name]["this week"]) == (was, now_serving)
        assert champions[name]["status"] == ("unchanged" if was == now_serving else "changed")

    segments = _by(tables["Segments"], "segment")
    for name, row in weeks.marts2["churn_by_segment"].items():
        assert _same(segments[name]["customers this week"], row["customers"])


def test_the_marts_keep_the_first_week_while_the_second_is_built(weeks):
    assert weeks.marts1_later == weeks.marts1
    weeks_held = _query(weeks.root, "select snapshot_week, customers from weekly_summary order by snapshot_week")
    assert [(str(r["snapshot_week"])[:10], r["customers"]) for r in weeks_held] == [(WEEK1, N), (WEEK2, N)]


def test_an_earlier_week_is_regenerated_from_its_own_rows_of_the_marts(weeks):
    """With week 2 built, week 1's documents are generated again from week 1's rows: the same bytes."""
    documents.generate(weeks.lake, WEEK1, weeks.marts, engagement_dbt.manifest_path)
    assert _kb_files(weeks.lake, WEEK1) == weeks.files1


def test_a_week_the_warehouse_does_not_hold_is_refused(weeks):
    never = "2026-11-02"
    with pytest.raises(documents.WeekNotInWarehouse,
                       match=f"hold no rows for snapshot week {never} \\(they hold: {WEEK1}, {WEEK2}\\)"):
        documents.generate(weeks.lake, never, weeks.marts, engagement_dbt.manifest_path)
    assert documents.available_weeks(weeks.lake) == [WEEK1, WEEK2]
