"""`engagement-dagster ask "…" [--week W] [--json] [--backend none|openai|bedrock]`: a question to the
week's knowledge base. Prints the answer, its citations and the tool calls made; with --json, the
whole `Answer`. A refusal (no week, no index, a backend that is not reachable) is one line naming
what is missing and what to do, exit status 2. No Dagster is imported."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from engagement_dagster.core.kb import llm
from engagement_dagster.core.kb.agent import Answer, build_agent
from engagement_dagster.core.settings import MissingSettings

log = logging.getLogger(__name__)


def render(answer: Answer) -> str:
    lines = [answer.text, ""]
    if answer.citations:
        lines.append("Sources:")
        lines += [f"  [{c.chunk_id}] {c.title}" for c in answer.citations]
    if answer.tool_calls:
        lines.append("Tool calls:")
        for use in answer.tool_calls:
            args = ", ".join(f"{k}={v!r}" for k, v in use.arguments.items())
            outcome = "ok" if use.ok else f"refused: {use.result.get('refused')}"
            lines.append(f"  {use.name}({args}) → {outcome}; source {use.result.get('source', '–')}")
    if answer.unsupported_numbers:
        lines.append(f"WARNING: numbers in the answer that no source states: {', '.join(answer.unsupported_numbers)}")
    lines.append(f"Backend: {answer.backend}. {answer.seconds * 1e3:.0f} ms "
                 f"(retrieval {answer.retrieval_seconds * 1e3:.0f} ms).")
    return "\n".join(lines)


def ask_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="engagement-dagster ask",
                                     description="Ask the week's knowledge base a question.")
    parser.add_argument("question", help='e.g. "Which segments have the highest churn risk?"')
    parser.add_argument("--week", help="snapshot week (YYYY-MM-DD); default: the latest week with documents")
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    parser.add_argument("--backend", choices=("none", "openai", "bedrock"),
                        help="override ENGAGEMENT_LLM_BACKEND (default none: offline, no language model)")
    args = parser.parse_args(argv)
    try:
        backend = "settings" if args.backend is None else llm.backend_from_settings(
            {**os.environ, "ENGAGEMENT_LLM_BACKEND": args.backend})
        agent = build_agent(week=args.week, backend=backend)
        answer = agent.ask(args.question)
    except (FileNotFoundError, ValueError, MissingSettings, llm.BackendError) as refused:
        log.debug("ask refused", exc_info=True)
        print(f"engagement-dagster ask: {refused}", file=sys.stderr)
        return 2
    print(answer.to_json() if args.json else render(answer))
    return 0
