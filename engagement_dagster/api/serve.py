"""`make serve` / `engagement-dagster serve`: the prediction API under uvicorn, one worker.

A refusal to start (no API key configured, no model in the registry yet) is one line saying what
to do, not a stack trace."""

from __future__ import annotations

import sys


def serve(host: str = "127.0.0.1", port: int = 8000) -> int:
    import uvicorn

    from engagement_dagster.api.app import ConfigurationError, create_app

    try:
        app = create_app()
    except ConfigurationError as refused:
        print(f"engagement-dagster serve: {refused}", file=sys.stderr)
        return 2
    # No access log: a line per request costs more than the prediction does at a few hundred a second.
    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="info")
    return 0
