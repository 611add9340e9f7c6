"""The knowledge base's evaluation set, run on a test week of the whole graph: at least 40 questions,
every expected document a real one, every figure computed from the week's results; the goals
(recall@5 ≥ 0.9, MRR ≥ 0.75, every figure right in the offline answers, p95 ≤ 200 ms) met."""

import pytest

from engagement_dagster.core.kb import agent as kb_agent
from engagement_dagster.core.kb import documents, evaluate
from engagement_dagster.core.storage.warehouse import Results, duckdb_query
from tests.conftest import KB_WEEKS

WEEK = KB_WEEKS[-1]


def test_the_set_has_40_questions_on_real_documents():
    questions = evaluate.load_questions()
    assert len(questions) >= 40
    with_figures = [q for q in questions if q.get("figures")]
    assert len(with_figures) >= 25
    kinds = {next(iter(k for k in f if k not in ("decimals", "scale"))) for q in with_figures for f in q["figures"]}
    assert kinds == {"metric", "metric_max", "top_feature", "sql"}
    doc_types = {q_doc for q in questions for q_doc in q.get("docs", [])}
    assert doc_types <= {"model_card_" + m for m in documents.MODELS} | {
        "feature_importance", "segment_profiles", "churn_by_segment", "at_risk_analysis",
        "high_engagement_analysis", "weekly_summary", "week_over_week", "data_dictionary"}


def test_a_figure_counts_only_when_stated_to_its_decimals():
    assert evaluate.figure_in("auc 0.7573 against 0.5000", 0.757295, 4)
    assert not evaluate.figure_in("auc 0.76", 0.757295, 4)  # rounded further than asked
    assert not evaluate.figure_in("auc 0.7574", 0.757295, 4)
    assert evaluate.figure_in("2,892 customers", 2892.0, 0) and not evaluate.figure_in("2,893", 2892.0, 0)
    assert evaluate.figure_in("share 2.89%", 2.892, 2)
    assert evaluate.figure_in("the top feature is avg_sentiment_score.", "avg_sentiment_score", None)
    assert not evaluate.figure_in("week of 2026-11-16", 2026.0, 0)  # a date is not a count


@pytest.fixture(scope="module")
def report(kb_weeks):
    root, lake, *_ = kb_weeks
    path = str(root / "warehouse.duckdb")
    results = Results(lambda sql: duckdb_query(path, sql), "main", "duckdb", path)
    agent = kb_agent.build_agent(week=WEEK, backend=None, lake=lake, results=results)
    return evaluate.run_eval(agent)


def test_the_goals_are_met_on_a_test_week(report):
    report, results = report
    print("\n" + evaluate.render(report, results))
    default = report.modes[report.default_mode]
    assert default["questions"] >= 40
    assert default["recall_at_5"] >= evaluate.GOALS["recall_at_5"]
    assert default["mrr"] >= evaluate.GOALS["mrr"]
    assert report.figures_total >= 30 and report.figures_correct == report.figures_total, [
        (r.id, f.spec, f.expected) for r in results for f in r.figures if not f.found]
    assert report.unsupported_answers == [] and report.tool_failures == []
    # The goal (p95 ≤ 200 ms) is measured by `make eval-kb` on an idle machine (docs/benchmarks.md);
    # here, on a shared test machine, the bound only catches a regression of another order (a model
    # reloaded per question costs seconds).
    assert report.latency["p95_ms"] <= 4 * evaluate.GOALS["p95_ms"]
    assert all(ok for goal, ok in report.passed.items() if goal != "p95_ms")


def test_hybrid_retrieval_ranks_at_least_as_well_as_bm25(report):
    report, _ = report
    if report.default_mode != "hybrid":
        pytest.skip("the [kb] extra is not installed: lexical only")
    hybrid, lexical = report.modes["hybrid"], report.modes["lexical"]
    found = {mode: round(scores["recall_at_5"] * scores["questions"]) for mode, scores in report.modes.items()}
    # on a small test week the two can trade one question; hybrid still ranks the documents higher
    assert found["hybrid"] >= found["lexical"] - 1 and hybrid["mrr"] >= lexical["mrr"]
