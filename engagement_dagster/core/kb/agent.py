"""The knowledge base's Q&A agent: retrieve passages from the week's documents, call tools when the
question needs live data, and answer with citations (document and chunk) and the tool calls made.

Backends (``ENGAGEMENT_LLM_BACKEND``, see `llm.backend_from_settings`):

* ``none`` (default): the offline answerer. No language model: the answer is composed
  deterministically from the retrieved passages (their lines that match the question, quoted
  as written, tables with their header) and from tool results, so it never states a number that
  is not in a source. A question naming a customer id gets that customer's details, and with
  "why"/"explain"/"driver"/"risk" the exact TreeSHAP explanation.
* ``openai``: any OpenAI-compatible chat endpoint (a local model server), with tool use.
* ``bedrock``: Claude on Bedrock through the Converse API, with tool use.

A language model's answer is checked the same way: numbers it states that appear in no passage and
no tool result are listed in ``Answer.unsupported_numbers`` (and shown by the CLI).

Retrieval: the local index (`index.search`) on the embedded default; on AWS (``ENGAGEMENT_ENV=aws``
with ``ENGAGEMENT_KB_ID`` set) the Bedrock knowledge base (`bedrock.retrieve`).

Plain Python, no Dagster.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engagement_dagster.core import settings
from engagement_dagster.core.kb import documents, index, llm
from engagement_dagster.core.kb.index import Passage, analyze
from engagement_dagster.core.kb.tools import SPECS, UUID, ToolRefused, Tools, explanation_in_words
from engagement_dagster.core.storage.warehouse import Results

OFFLINE = "none (offline answerer: composed from the retrieved passages and tool results, no language model)"
MAX_ITEMS = 8  # sentences and tables an offline answer quotes, at most
PER_PASSAGE = 2  # ... and at most this many from one passage, so the next passages are heard too
# A question asking for a figure ("how many", "what share", "the mean …"): items that state a number
# (not a date) weigh NUMERIC_BONUS times more.
ASKS_FOR_A_FIGURE = re.compile(r"\b(how (many|much)|share|percentage|proportion|number of|total|mean|average|"
                               r"median|rate)\b", re.IGNORECASE)
NUMERIC_BONUS = 1.5
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_TABLE_ROWS = 12  # a larger table is quoted by its matching rows
KEEP = 0.6  # quote every item scoring at least this share of the best item's score
RANK_DISCOUNT = 0.15  # an item of the n-th passage scores 1 / (1 + 0.15 n) of the same item in the first
EXPLAIN_WORDS = {"why", "explain", "driver", "reason", "risk", "caus"}  # analysed (stemmed) forms
# A number as a text states it: an ISO date is one number; 1,234.5 is one.
NUMBER = re.compile(r"\d{4}-\d{2}-\d{2}|(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?")
CITATION = re.compile(r"\[[\w.-]+#[\w-]+\]")
SYSTEM_PROMPT = """You answer business questions about one week of a customer engagement platform's results \
(week of {week}). Use the passages below from the week's knowledge-base documents and, for live data, the tools: \
query_results (read-only SQL on the results tables), customer_details and explain_prediction (one customer). \
Cite every passage you use by its id in square brackets, e.g. [churn_by_segment#000]. State only numbers that \
appear in a passage or a tool result, exactly as they appear there; if the sources do not answer the question, \
say so. Be brief."""


@dataclass(frozen=True)
class Citation:
    doc_id: str
    chunk_id: str
    title: str


@dataclass(frozen=True)
class ToolUse:
    name: str
    arguments: dict
    ok: bool
    result: dict


@dataclass
class Answer:
    question: str
    week: str
    text: str
    backend: str
    citations: list[Citation] = field(default_factory=list)
    tool_calls: list[ToolUse] = field(default_factory=list)
    unsupported_numbers: list[str] = field(default_factory=list)
    retrieval_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


# ---------------------------------------------------------------------------------------------
# Numbers and sources


def numbers_in(text: str) -> list[str]:
    """The numbers a text states, as written (thousands separators kept)."""
    return NUMBER.findall(text)


def _value(number: str) -> float | str:
    return number if number.count("-") == 2 else float(number.replace(",", ""))


def unsupported(text: str, sources: Sequence[str]) -> list[str]:
    """Numbers in ``text`` that no source states (compared as values: 0.574 and 0.5740 are one number;
    citations such as [churn_by_segment#000] are not numbers)."""
    known = {_value(n) for source in sources for n in numbers_in(source)}
    return [n for n in numbers_in(CITATION.sub("", text)) if _value(n) not in known]


# ---------------------------------------------------------------------------------------------
# The offline answerer's line selection


@dataclass
class _Item:
    """A quotable piece of a passage: one sentence line, or one table (its header, separator and rows)."""

    position: int  # order in the passage
    heading: str  # the heading it falls under
    line: str = ""  # a sentence
    header: list[str] = field(default_factory=list)  # a table's header and separator rows
    rows: list[str] = field(default_factory=list)


def _items(passage: Passage) -> list[_Item]:
    """A chunk's text as items. The chunk's lead (title, heading, table header; see index.Chunk) is
    context, not something to quote."""
    lead, _, body = passage.text.partition("\n\n") if "\n\n" in passage.text else ("", "", passage.text)
    lead_lines = lead.splitlines()
    heading = next((line for line in lead_lines[1:] if not line.startswith("|")), "")
    table = _Item(-1, heading, header=[line for line in lead_lines if line.startswith("|")])
    items, lines = [], body.splitlines()
    if table.header and lines and not lines[0].startswith("|"):
        lines[0] = ""  # the chunk starts inside a table row: not a line to quote
    for i, line in enumerate(lines):
        if line.startswith("|") and not line.startswith("|---"):
            if i + 1 < len(lines) and lines[i + 1].startswith("|---"):  # a new table's header row
                table = _Item(i, heading, header=[line, lines[i + 1]])
                items.append(table)
            elif table.header:
                if table not in items:  # a table that started before this chunk (header from the lead)
                    table.position = i
                    items.append(table)
                table.rows.append(line)
            continue
        if line.startswith("|---") or not line.strip() or line.strip() == f"# {passage.title}":
            continue
        table = _Item(-1, heading)
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        else:
            items.append(_Item(i, heading, line=line))
    return [item for item in items if item.line or item.rows]


FIGURE_CELL = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?%?$")


def _states_a_number(item: _Item) -> bool:
    """A sentence with a number that is not a date, or a table with a cell that is a figure."""
    if item.line:
        return bool(numbers_in(DATE.sub("", item.line)))
    return any(FIGURE_CELL.match(cell.strip()) for row in item.rows for cell in row.strip("|").split("|")[1:])


def _score(text: str, terms: set[str], weights: dict[str, float]) -> float:
    return sum(weights.get(t, 1.0) for t in set(analyze(text)) & terms)


def _label(row: str) -> str:
    return row.split("|")[1] if row.count("|") > 1 else row


def _quote(item: _Item, terms: set[str], weights: dict[str, float]) -> list[str]:
    """The lines to quote for an item: a sentence; a small table whole; of a large one, its header
    and the rows whose label shares most with the question (else its first rows)."""
    if item.line:
        return [item.line]
    rows = item.rows
    if len(rows) > MAX_TABLE_ROWS:
        scores = [_score(_label(r), terms, weights) for r in rows]
        best = max(scores)
        rows = [r for r, sc in zip(rows, scores, strict=True) if sc >= KEEP * best and sc > 0] if best else rows
        rows = rows[:MAX_TABLE_ROWS]
    return ([f"{item.heading}:"] if item.heading else []) + item.header + rows


def compose_offline(question: str, week: str, passages: Sequence[Passage],
                    weights: dict[str, float] | None = None) -> tuple[str, list[Citation]]:
    """The offline answer: the passages' sentences and tables that share the most (rare) words with
    the question, quoted as written under the passage they come from.

    A sentence scores the idf-weighted overlap of its words with the question's, plus half that of
    its document's title and its heading; a table, its best row label's overlap plus that of the
    title, its heading and its header row.
    When the question asks for a figure, items stating a number weigh more. Scores are discounted by
    the passage's rank; the best items within ``KEEP`` of the best are quoted (at most ``MAX_ITEMS``,
    ``PER_PASSAGE`` from one passage)."""
    terms, weights = set(analyze(question)), weights or {}
    figure_wanted = bool(ASKS_FOR_A_FIGURE.search(question))
    scored: list[tuple[float, int, _Item]] = []
    for rank, passage in enumerate(passages):
        for item in _items(passage):
            if item.line:
                own = _score(item.line, terms, weights)
                context = _score(f"{passage.title} {item.heading}", terms, weights)
            else:
                own = max(_score(_label(r), terms, weights) for r in item.rows)
                context = _score(f"{passage.title} {item.heading} {item.header[0]}", terms, weights)
            score = own + (context if item.rows else 0.5 * context)  # a table's header is its sentence
            if figure_wanted and _states_a_number(item):
                score *= NUMERIC_BONUS
            if own > 0 or (item.rows and context > 0):
                scored.append((score / (1 + RANK_DISCOUNT * rank), rank, item))
    if not scored:
        return (f"The week's documents (week of {week}) have no passage that answers this question. Try other "
                "words, or ask about a customer by id."), []
    best = max(score for score, _, _ in scored)
    chosen, per_passage = [], {}
    for entry in sorted((s for s in scored if s[0] >= KEEP * best), key=lambda s: (-s[0], s[1])):
        if per_passage.get(entry[1], 0) < PER_PASSAGE and len(chosen) < MAX_ITEMS:
            per_passage[entry[1]] = per_passage.get(entry[1], 0) + 1
            chosen.append(entry)
    parts, citations, quoted = [], [], set()
    for rank, passage in enumerate(passages):
        out = []
        for item in sorted((item for _, r, item in chosen if r == rank), key=lambda item: item.position):
            lines = _quote(item, terms, weights)
            key = (passage.doc_id, tuple(lines))
            if key not in quoted:  # overlapping chunks of one document hold the same lines
                quoted.add(key)
                out += lines
        if out:
            citations.append(Citation(passage.doc_id, passage.chunk_id, passage.title))
            parts.append(f"From {passage.title} [{passage.chunk_id}]:\n" + "\n".join(out))
    return "\n\n".join(parts), citations


# ---------------------------------------------------------------------------------------------
# The agent


Retriever = Callable[[str, int], list[Passage]]


@dataclass
class Agent:
    """Answers questions about one week. ``retrieve(question, k)`` gives passages; ``tools`` runs tools;
    ``backend`` is a chat backend, or None for the offline answerer."""

    week: str
    retrieve: Retriever
    tools: Tools
    backend: llm.ChatBackend | None = None
    k: int = 8  # passages an answer draws on (the offline answerer quotes the best of them)
    weights: dict[str, float] | None = None  # the offline answerer's term weights (the local index's idf)

    @property
    def backend_name(self) -> str:
        return OFFLINE if self.backend is None else self.backend.name

    def ask(self, question: str) -> Answer:
        question = question.strip()
        if not question:
            raise ValueError("ask a question: the text is empty")
        started = time.perf_counter()
        passages = self.retrieve(question, self.k)
        retrieved = time.perf_counter()
        if self.backend is None:
            answer = self._offline(question, passages)
        else:
            answer = self._with_model(question, passages)
        answer.retrieval_seconds = retrieved - started
        answer.seconds = time.perf_counter() - started
        return answer

    def _call(self, name: str, arguments: dict) -> ToolUse:
        try:
            return ToolUse(name, arguments, True, self.tools.call(name, arguments))
        except ToolRefused as refused:
            return ToolUse(name, arguments, False, {"refused": str(refused)})

    def _offline(self, question: str, passages: list[Passage]) -> Answer:
        ids = UUID.findall(question)
        if ids:  # a question about one customer: the tools answer it, not the documents
            uses, parts = [], []
            wants_reason = bool(set(analyze(question)) & EXPLAIN_WORDS)
            for customer_id in dict.fromkeys(ids):
                details = self._call("customer_details", {"customer_id": customer_id})
                uses.append(details)
                if not details.ok:
                    parts.append(f"Customer {customer_id}: {details.result['refused']}.")
                    continue
                parts.append(_details_in_words(details.result["customer"]))
                if wants_reason:
                    explained = self._call("explain_prediction", {"customer_id": customer_id})
                    uses.append(explained)
                    parts.append("\n".join(explanation_in_words(explained.result)) if explained.ok
                                 else f"No explanation: {explained.result['refused']}.")
            text = "\n\n".join(parts)
            sources = [json.dumps(u.result, default=str) for u in uses]
            return Answer(question, self.week, _offline_note(self.week) + text, OFFLINE, tool_calls=uses,
                          unsupported_numbers=unsupported(text, sources))
        text, citations = compose_offline(question, self.week, passages, self.weights)
        cited = [p.text for p in passages if p.chunk_id in {c.chunk_id for c in citations}]
        return Answer(question, self.week, _offline_note(self.week) + text, OFFLINE, citations=citations,
                      unsupported_numbers=unsupported(text, cited))

    def _with_model(self, question: str, passages: list[Passage]) -> Answer:
        context = "\n\n".join(f"[{p.chunk_id}] {p.title}\n{p.text}" for p in passages)
        prompt = f"Passages:\n\n{context}\n\nQuestion: {question}"
        uses: list[ToolUse] = []

        def execute(call: llm.ToolCall) -> llm.ToolResult:
            use = self._call(call.name, call.arguments)
            uses.append(use)
            return llm.ToolResult(call.id, call.name, json.dumps(use.result, default=str), is_error=not use.ok)

        text, _ = llm.run_tool_loop(self.backend, SYSTEM_PROMPT.format(week=self.week), prompt, list(SPECS),
                                    execute)
        cited_ids = set(re.findall(r"\[([\w.-]+#[\w-]+)\]", text))
        cited = [p for p in passages if p.chunk_id in cited_ids] or passages
        sources = [p.text for p in passages] + [json.dumps(u.result, default=str) for u in uses] + [question]
        return Answer(question, self.week, text, self.backend_name,
                      citations=[Citation(p.doc_id, p.chunk_id, p.title) for p in cited], tool_calls=uses,
                      unsupported_numbers=unsupported(text, sources))


def _offline_note(week: str) -> str:
    return (f"Week of {week}. Answered offline, without a language model: the lines below are quoted from the "
            "sources cited.\n\n")


def _details_in_words(c: dict) -> str:
    drivers = [f"{c[f'churn_driver_{i}']} ({c[f'churn_driver_{i}_contribution']:+.4f})" for i in (1, 2, 3)
               if c.get(f"churn_driver_{i}")]
    recommended = [c[f"recommended_category_{i}"] for i in (1, 2, 3) if c.get(f"recommended_category_{i}")]
    lines = [
        f"Customer {c['customer_id']} (week of {c['snapshot_week']}), segment {c['segment']}:",
        (f"- churn probability {c['churn_probability']}, predicted engagement {c['predicted_engagement_score']}, "
         f"predicted lifetime value {c['predicted_lifetime_value_usd']} USD, "
         f"value at risk {c['value_at_risk_usd']} USD"),
        f"- anomaly: {'yes' if c['is_anomaly'] else 'no'} (score {c['anomaly_score']})",
        f"- recommended content: {', '.join(recommended) or 'none'}",
    ]
    if drivers:
        lines.append(f"- top churn drivers ({c['churn_drivers_method']}, log-odds): {', '.join(drivers)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Wiring from the environment


def latest_week(lake) -> str:
    weeks = documents.available_weeks(lake)
    if not weeks:
        raise FileNotFoundError("the knowledge base has no week yet: run `make run` (it materializes "
                                "knowledge_base/kb_documents and kb_index)")
    return weeks[-1]


def local_retriever(lake, week: str) -> Retriever:
    def retrieve(question: str, k: int) -> list[Passage]:
        return list(index.search(lake, week, question, k=k))
    return retrieve


def build_agent(week: str | None = None, backend: llm.ChatBackend | str | None = "settings",
                lake=None, results: Results | None = None, manifest_path: Path | None = None) -> Agent:
    """The agent of the environment switch: the lake, warehouse and retrieval of ENGAGEMENT_ENV, the
    backend of ENGAGEMENT_LLM_BACKEND (unless given)."""
    from engagement_dagster.core.storage.lake import open_store
    from engagement_dagster.core.storage.warehouse import open_results

    lake = lake if lake is not None else open_store()
    week = week or latest_week(lake)
    if week not in documents.available_weeks(lake):
        raise FileNotFoundError(f"the knowledge base has no documents for week {week}: weeks available: "
                                f"{', '.join(documents.available_weeks(lake)) or 'none'}")
    results = results if results is not None else open_results()
    manifest_path = manifest_path or settings.PROJECT_ROOT / "dbt_project" / "target" / "manifest.json"
    if backend == "settings":
        backend = llm.backend_from_settings()
    retrieve = local_retriever(lake, week)
    if settings.environment() == "aws" and os.environ.get("ENGAGEMENT_KB_ID"):
        from engagement_dagster.core.kb import bedrock

        target = bedrock.target_from_settings()

        def retrieve(question: str, k: int) -> list[Passage]:
            return bedrock.retrieve(target, week, question, k=k)

    weights = index.term_weights(lake, week) if lake.exists(index.index_manifest_key(week)) else None
    return Agent(week=week, retrieve=retrieve, tools=Tools(lake, results, week, manifest_path), backend=backend,
                 weights=weights)
