"""The knowledge base's sentence-embedding model as a resource: a run loads it while it waits on dbt,
not when the index step starts.

The in-process executor sets up every resource a run's steps require once, before the first step.
`setup_for_execution` registers the model's load (torch and the weights, ~4 s on 2 cores) as idle work
(`core/idle_work.py`): the first dbt step starts it beside dbt's subprocess, and the index step, which
needs the model, waits for a load under way or loads it itself. A run that does not build the index does
not require this resource and loads nothing."""

from __future__ import annotations

import dagster as dg

from engagement_dagster.core import idle_work
from engagement_dagster.core.kb import embeddings


class KbEmbeddings(dg.ConfigurableResource):
    """all-MiniLM-L6-v2 from the [kb] extra (`core.kb.embeddings`), or none: without the extra, or with
    ENGAGEMENT_KB_EMBEDDINGS=off, the index is lexical only."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        embedder = embeddings.default_embedder()
        if embedder is not None:
            idle_work.when_idle("kb-embedder-load", embedder.load)

    def embedder(self) -> embeddings.SentenceEmbedder | None:
        return embeddings.default_embedder()
