"""Slow set-up that a later step needs, started while a run's process would otherwise only wait.

In a weekly run the Python steps keep the interpreter busy (ingest, training and scoring hold the GIL
most of the time), while a dbt step waits seconds on dbt's subprocess. A resource registers its slow
set-up here when the run starts (`when_idle`: the knowledge base's embedding model, ~4 s of imports and
weights on 2 cores); the dbt step calls `start` just before it starts dbt, and the work runs on a daemon
thread beside dbt instead of competing with ingest for the GIL (at 100,000 customers ingest takes
1.0 s, against 1.8 s when the load started with the run).

Registered work must be safe when its user needs the result first or at the same time
(`SentenceEmbedder.load` takes a lock: the index step waits for a load under way). Work that no step
starts (a run without a dbt step) costs nothing: its user does it when it needs it. A failure here is
left for the user's own call, which raises it where it is handled. Plain Python, no Dagster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_pending: dict[str, Callable[[], object]] = {}
_running: list[threading.Thread] = []
_lock = threading.Lock()


def when_idle(name: str, work: Callable[[], object]) -> None:
    """Run `work` on a daemon thread at the next `start` (once: a second registration under the same
    name replaces the first)."""
    with _lock:
        _pending[name] = work


def start() -> list[threading.Thread]:
    """Start every registered piece of work, each on its own daemon thread, and forget it."""
    with _lock:
        work = dict(_pending)
        _pending.clear()
    threads = [threading.Thread(target=_quietly, args=(fn,), name=f"idle-work-{name}", daemon=True)
               for name, fn in work.items()]
    for thread in threads:
        thread.start()
    with _lock:
        _running[:] = [t for t in _running if t.is_alive()] + threads
    return threads


def wait() -> float:
    """Wait for the work under way to finish; the seconds waited. A step that imports packages the
    work imports too calls this first: two threads importing one package at the same time can
    deadlock (Python then fails one of the imports)."""
    with _lock:
        running = list(_running)
    started = time.perf_counter()
    for thread in running:
        thread.join()
    return time.perf_counter() - started


def _quietly(work: Callable[[], object]) -> None:
    try:
        work()
    except Exception:  # left for the user's own call, which raises it where it is handled
        pass
