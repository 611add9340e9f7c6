"""`make eval-kb`: the knowledge base measured on its evaluation set (evals/kb_questions.yaml).

For every question: where its expected documents rank among the retrieved passages (recall@5,
MRR over the top 10) with BM25 alone, embeddings alone and the hybrid (when the week was indexed
with embeddings), and the offline answer: each figure computed from the week's results (the
registry's metrics.json of the version that scored the week, or a query on the marts) must
appear in it exactly (to the stated decimals), no number may be unsupported by its sources, and
a customer question must call its tools. Then the offline answer's latency (after load).

Prints a report; exits 1 when a goal is missed (recall@5 ≥ 0.9, MRR ≥ 0.75, every figure right,
p95 ≤ 200 ms). Plain Python, no Dagster.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engagement_dagster.core.kb import index
from engagement_dagster.core.kb.agent import Agent, Answer, build_agent, numbers_in
from engagement_dagster.core.ml.registry import ModelRegistry
from engagement_dagster.core.settings import PROJECT_ROOT

QUESTIONS_FILE = PROJECT_ROOT / "evals" / "kb_questions.yaml"
GOALS = {"recall_at_5": 0.9, "mrr": 0.75, "figures_correct": 1.0, "p95_ms": 200.0}
MRR_DEPTH = 10


@dataclass
class Figure:
    spec: dict
    expected: object  # a float, or a name (str)
    found: bool


@dataclass
class QuestionResult:
    id: str
    question: str
    docs: list[str]
    ranks: dict[str, int | None] = field(default_factory=dict)  # mode → rank of the first expected document
    figures: list[Figure] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    tools_ok: bool = True
    answer: Answer | None = None


def load_questions(path: Path = QUESTIONS_FILE) -> list[dict]:
    questions = yaml.safe_load(path.read_text())["questions"]
    ids = [q["id"] for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: question ids repeat")
    return questions


def _scalar(agent: Agent, sql: str, customer_id: str | None = None):
    """The first value of a query on the marts; ``{week}`` in the SQL is the evaluated week (the marts keep
    every week: a figure's query selects its own), ``{customer_id}`` the question's customer."""
    sql = sql.format(week=agent.week, customer_id=customer_id)
    frame = agent.tools.results.query(sql)
    if frame.empty:
        raise ValueError(f"the figure query returned no row: {sql}")
    value = frame.iloc[0, 0]
    return str(value) if isinstance(value, str) else float(value)


def _metrics(agent: Agent, model: str) -> dict:
    """metrics.json of the version that scored the week (the weekly_summary mart says which)."""
    version = _scalar(agent, f"select {model}_version from weekly_summary where snapshot_week = date '{{week}}'")
    if version == "baseline":
        raise ValueError(f"{model} is served by its naive baseline this week: no metrics to check")
    return ModelRegistry(agent.tools.lake).metrics(model, str(version))


def expected_figure(agent: Agent, spec: dict, customer_id: str | None = None):
    """The figure a question's answer must state, from the week's results (never the documents)."""
    if "metric" in spec:
        model, section, key = spec["metric"].split("/")
        value = _metrics(agent, model)[section][key]
    elif "metric_max" in spec:
        model, section = spec["metric_max"].split("/")
        value = max(_metrics(agent, model)[section].values())
    elif "top_feature" in spec:
        return next(iter(_metrics(agent, spec["top_feature"])["importance_mean_abs_shap"]))
    elif "sql" in spec:
        value = _scalar(agent, spec["sql"], customer_id)
        if isinstance(value, str):
            return value
    else:
        raise ValueError(f"unknown figure spec {spec}")
    return float(value) * spec.get("scale", 1)


def figure_in(answer_text: str, expected, decimals: int | None) -> bool:
    """Whether the answer states the figure: a name appears as a word; a number appears with at
    least ``decimals`` decimals right (0.7573 for 0.75729…; 2,892 for 2892)."""
    if isinstance(expected, str):
        return expected in answer_text
    places = 4 if decimals is None else decimals
    target = round(expected, places)
    for number in numbers_in(answer_text):
        if number.count("-") == 2:
            continue
        value = float(number.replace(",", ""))
        shown = len(number.split(".")[1]) if "." in number else 0
        if shown >= places and math.isclose(round(value, places), target, abs_tol=10 ** -(places + 3)):
            return True
    return False


def evaluate(agent: Agent, questions: list[dict], modes: list[str]) -> list[QuestionResult]:
    results = []
    for q in questions:
        customer_id = None
        text = q["question"]
        if "customer" in q:
            customer_id = str(_scalar(agent, q["customer"]))
            text = text.format(customer_id=customer_id)
        result = QuestionResult(q["id"], text, q.get("docs", []))
        if result.docs:
            for mode in modes:
                hits = index.search(agent.tools.lake, agent.week, text, k=MRR_DEPTH, mode=mode)
                result.ranks[mode] = next((i for i, h in enumerate(hits, 1) if h.doc_id in result.docs), None)
        answer = agent.ask(text)
        result.answer = answer
        result.unsupported = answer.unsupported_numbers
        for spec in q.get("figures", []):
            expected = expected_figure(agent, spec, customer_id)
            result.figures.append(Figure(spec, expected, figure_in(answer.text, expected, spec.get("decimals"))))
        if q.get("tools"):
            called = [u.name for u in answer.tool_calls if u.ok]
            result.tools_ok = all(t in called for t in q["tools"])
        results.append(result)
    return results


def retrieval_scores(results: list[QuestionResult], mode: str) -> dict[str, float]:
    ranked = [r.ranks[mode] for r in results if mode in r.ranks]
    return {"questions": len(ranked),
            "recall_at_5": sum(1 for r in ranked if r is not None and r <= 5) / len(ranked),
            "mrr": sum(1 / r for r in ranked if r is not None) / len(ranked)}


def latency_ms(agent: Agent, questions: list[str], repeat: int = 3) -> dict[str, float]:
    agent.ask(questions[0])  # load the index and the embedding model: not part of a question's latency
    samples = []
    for _ in range(repeat):
        for text in questions:
            started = time.perf_counter()
            agent.ask(text)
            samples.append((time.perf_counter() - started) * 1e3)
    samples.sort()
    return {"n": len(samples), "p50_ms": statistics.median(samples),
            "p95_ms": samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)], "max_ms": samples[-1]}


@dataclass
class Report:
    week: str
    backend: str
    index_backend: str
    chunks: int
    modes: dict[str, dict[str, float]]
    default_mode: str
    figures_total: int
    figures_correct: int
    unsupported_answers: list[str]
    tool_failures: list[str]
    misses: list[str]
    latency: dict[str, float]

    @property
    def passed(self) -> dict[str, bool]:
        scores = self.modes[self.default_mode]
        return {
            "recall_at_5": scores["recall_at_5"] >= GOALS["recall_at_5"],
            "mrr": scores["mrr"] >= GOALS["mrr"],
            "figures_correct": (self.figures_correct == self.figures_total and not self.unsupported_answers
                                and not self.tool_failures),
            "p95_ms": self.latency["p95_ms"] <= GOALS["p95_ms"],
        }


def run_eval(agent: Agent, questions: list[dict] | None = None) -> tuple[Report, list[QuestionResult]]:
    questions = questions or load_questions()
    manifest = index.read_index_manifest(agent.tools.lake, agent.week)
    hybrid = index.EMBEDDINGS_FILE in manifest["files"] and index.default_embedder() is not None
    modes = ["lexical", "dense", "hybrid"] if hybrid else ["lexical"]
    results = evaluate(agent, questions, modes)
    figures = [f for r in results for f in r.figures]
    texts = [r.question for r in results]
    report = Report(
        week=agent.week, backend=agent.backend_name, index_backend=manifest["backend"],
        chunks=manifest["counts"]["chunks"], modes={m: retrieval_scores(results, m) for m in modes},
        default_mode="hybrid" if hybrid else "lexical",
        figures_total=len(figures), figures_correct=sum(f.found for f in figures),
        unsupported_answers=[f"{r.id}: {', '.join(r.unsupported)}" for r in results if r.unsupported],
        tool_failures=[r.id for r in results if not r.tools_ok],
        misses=[f"{r.id} ({mode})" for r in results for mode, rank in r.ranks.items() if rank is None or rank > 5],
        latency=latency_ms(agent, texts),
    )
    return report, results


def render(report: Report, results: list[QuestionResult]) -> str:
    lines = [(f"Knowledge-base evaluation, week {report.week}: {len(results)} questions "
              f"({sum(1 for r in results if r.docs)} with expected documents, {report.figures_total} figures)"),
             f"index: {report.index_backend}, {report.chunks} chunks; answerer: {report.backend}", "",
             f"{'retrieval':<10} {'recall@5':>9} {'MRR@10':>8}"]
    for mode, scores in report.modes.items():
        marker = "  ← default" if mode == report.default_mode else ""
        lines.append(f"{mode:<10} {scores['recall_at_5']:>9.3f} {scores['mrr']:>8.3f}{marker}")
    lines += ["", f"figures correct in the offline answers: {report.figures_correct}/{report.figures_total}",
              f"answers stating a number no source states: {len(report.unsupported_answers)}",
              f"customer questions whose tools ran: {sum(1 for r in results if r.tools_ok)}/{len(results)}",
              (f"offline answer latency after load: p50 {report.latency['p50_ms']:.1f} ms, "
               f"p95 {report.latency['p95_ms']:.1f} ms, max {report.latency['max_ms']:.1f} ms "
               f"({report.latency['n']} answers)"), ""]
    wrong = [(r.id, f) for r in results for f in r.figures if not f.found]
    lines += [f"MISSING FIGURE {qid}: {f.spec} = {f.expected}" for qid, f in wrong]
    lines += [f"UNSUPPORTED NUMBERS {u}" for u in report.unsupported_answers]
    lines += [f"TOOLS NOT CALLED {t}" for t in report.tool_failures]
    lines += [f"retrieval miss: {m}" for m in report.misses]
    goals = report.passed
    lines.append("goals: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in goals.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engagement_dagster.core.kb.evaluate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--week", help="snapshot week; default the latest with documents")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--json", help="also write the report and every answer to this file")
    args = parser.parse_args(argv)
    agent = build_agent(week=args.week, backend=None)
    report, results = run_eval(agent, load_questions(args.questions))
    print(render(report, results))
    if args.json:
        Path(args.json).write_text(json.dumps({"report": report.__dict__, "passed": report.passed, "answers": [
            {"id": r.id, "question": r.question, "ranks": r.ranks, "answer": r.answer.to_dict() if r.answer else None,
             "figures": [{"spec": f.spec, "expected": f.expected, "found": f.found} for f in r.figures]}
            for r in results]}, indent=2, default=str))
    return 0 if all(report.passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
