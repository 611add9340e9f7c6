"""One writer per lake at a time: a lease that a weekly run (and `engagement-dagster erase`) holds
while it writes, refused to a second writer with a message that names the holder.

Why the whole lake and not one week: the model registry, the DuckDB warehouse file and the knowledge
base are shared by every week, so two runs of different weeks would interleave writes there too. The
Dagster run queue already keeps one run per week (docs/operations.md); this lease is the last line,
for writers the queue does not see (a second Dagster instance, `erase`, a script).

How it is held:
- Local lake: an exclusive ``flock`` on ``.locks/writer`` under the lake root. The kernel releases it
  when the holding process dies, SIGKILL included, so a crashed run never blocks its rerun.
- S3 lake: an object ``.locks/writer.json`` created with ``If-None-Match: *`` (one creator wins),
  renewed every `HEARTBEAT_SECONDS` with ``If-Match`` on its ETag. A holder whose last renewal is
  older than `EXPIRES_SECONDS` is dead (a killed Fargate task renews nothing): the next writer takes
  the lease over, again with ``If-Match``, so of two takers only one wins.

Plain Python, no Dagster: the Dagster resource `defs.resources.lease` holds one per run.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from botocore.exceptions import ClientError

from engagement_dagster.core.storage.lake import LocalStore, S3Store, Store

LEASE_KEY = ".locks/writer"  # hidden: lake listings and searches skip dot-names
HEARTBEAT_SECONDS = 30.0
EXPIRES_SECONDS = 300.0


class LakeBusy(RuntimeError):
    """Another writer holds the lake."""

    def __init__(self, where: str, holder: dict):
        self.where, self.holder = where, holder
        super().__init__(
            f"the lake {where} is being written by {describe(holder)}; a second writer would interleave its files "
            "with that one's (the registry, the warehouse and the predictions are shared by every week). Wait for "
            "it to finish (make ui → Runs) or stop it, then run again.")


def describe(holder: dict) -> str:
    what = holder.get("what") or "a writer"
    since = holder.get("since", "?")
    return f"{what} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since})"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def holder_record(what: str) -> dict:
    """Who holds the lease, for the message a refused writer gets."""
    return {"what": what, "pid": os.getpid(), "host": socket.gethostname(), "since": _now()}


# Leases this process holds, by lake: a writer that calls another writer (a run that erases) nests.
_held: dict[str, list] = {}
_held_lock = threading.Lock()


@contextmanager
def writer_lease(store: Store, what: str) -> Iterator[dict]:
    """Holds the lake's writer lease for the block; raises `LakeBusy` naming the holder if another
    process holds it. Re-entrant within one process."""
    where = store.uri(LEASE_KEY)
    with _held_lock:
        nested = _held.get(where)
        if nested is not None:
            nested[1] += 1
    if nested is not None:
        try:
            yield nested[0].holder
        finally:
            with _held_lock:
                nested[1] -= 1
        return
    lease = _LocalLease(store) if isinstance(store, LocalStore) else _S3Lease(store)
    lease.acquire(holder_record(what))
    if isinstance(store, LocalStore):
        store.remove_temporary_files()  # a killed writer's; with the lease held, no live writer has any
    with _held_lock:
        _held[where] = [lease, 1]
    try:
        yield lease.holder
    finally:
        with _held_lock:
            del _held[where]
        lease.release()


def current_holder(store: Store) -> dict | None:
    """The holder's record if someone holds the lease now, else None (for `status`-like reporting)."""
    lease = _LocalLease(store) if isinstance(store, LocalStore) else _S3Lease(store)
    return lease.peek()


class _LocalLease:
    def __init__(self, store: LocalStore):
        self.path = Path(store.root) / LEASE_KEY
        self.fd: int | None = None
        self.holder: dict = {}

    def acquire(self, holder: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                recorded = self._read(fd)
                os.close(fd)
                raise LakeBusy(str(self.path.parent.parent), recorded) from None
            # The file may have been replaced between open and flock: hold the one on disk.
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd, self.holder = fd, holder

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 65536, 0) or b"{}")
        except ValueError:
            return {}

    def peek(self) -> dict | None:
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read(fd)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # the file stays (unlinking a locked file races a new opener)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class _S3Lease:
    def __init__(self, store: S3Store):
        self.store = store
        self.key = store._key(LEASE_KEY + ".json")
        self.etag: str | None = None
        self.holder: dict = {}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()

    def _client(self):
        return self.store._client()

    def _get(self) -> tuple[dict, str] | None:
        try:
            response = self._client().get_object(Bucket=self.store.bucket, Key=self.key)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(response["Body"].read() or b"{}"), response["ETag"]

    def _put(self, record: dict, **condition) -> str | None:
        """A conditional PUT; the new ETag, or None when the condition failed (someone else won)."""
        try:
            response = self._client().put_object(Bucket=self.store.bucket, Key=self.key,
                                                  Body=json.dumps(record).encode(), **condition)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return None
            raise
        return response["ETag"]

    @staticmethod
    def _expired(record: dict) -> bool:
        renewed = record.get("renewed") or record.get("since")
        try:
            age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(renewed)).total_seconds()
        except (TypeError, ValueError):
            return True
        return age > record.get("expires_seconds", EXPIRES_SECONDS)

    def acquire(self, holder: dict) -> None:
        record = {**holder, "renewed": holder["since"], "expires_seconds": EXPIRES_SECONDS}
        etag = self._put(record, IfNoneMatch="*")
        if etag is None:
            current = self._get()
            if current is not None and not self._expired(current[0]):
                raise LakeBusy(self.store.uri(LEASE_KEY + ".json"), current[0])
            # Expired (its holder stopped renewing) or gone meanwhile: take it over, only if unchanged.
            etag = (self._put(record, IfMatch=current[1]) if current is not None
                    else self._put(record, IfNoneMatch="*"))
            if etag is None:
                latest = self._get()
                raise LakeBusy(self.store.uri(LEASE_KEY + ".json"), latest[0] if latest else {})
        self.etag, self.holder = etag, record
        self._renewer = threading.Thread(target=self._renew, name="lake-lease-renewal", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                record = {**self.holder, "renewed": _now()}
                etag = self._put(record, IfMatch=self.etag)
                if etag is None:  # taken over after we failed to renew in time: nothing left to renew
                    return
                self.etag, self.holder = etag, record

    def peek(self) -> dict | None:
        current = self._get()
        return None if current is None or self._expired(current[0]) else current[0]

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._lock:
            current = self._get()
            if current is not None and current[1] == self.etag:  # still ours
                self._client().delete_object(Bucket=self.store.bucket, Key=self.key)
