"""Reading a customer source as a stream of Arrow batches: CSV (optionally gzipped) or Parquet,
from a path, file://, s3:// or http(s) URI.

CSV is read by Arrow's streaming reader, every column as text, so memory stays at a few blocks
whatever the file's size and the contract (contract.py) decides what each value means. A file
that cannot be parsed is scanned once more, line by line, to say what is wrong and where: a
duplicated header name, a delimiter other than ',', bytes that are not UTF-8, a short last row.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import shutil
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from engagement_dagster.core.data.contract import LAKE_COLUMNS, ContractViolation, is_pii

CSV_BLOCK_BYTES = 16 << 20  # Arrow parses a CSV in blocks of this size (~50,000 rows of the contract)
PARQUET_BATCH_ROWS = 65_536
OTHER_DELIMITERS = {";": "';' (semicolon)", "\t": "a tab", "|": "'|' (pipe)"}
FORMATS = (".csv", ".csv.gz", ".parquet")


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path for the source: the file itself, or an s3:// / http(s) object streamed to a
    temporary file (bounded memory; Parquet needs to seek, and a bad CSV is read twice)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        yield Path(parsed.path if parsed.scheme == "file" else uri)
        return
    with tempfile.TemporaryDirectory(prefix="engagement-source-") as tmp:
        path = Path(tmp) / Path(parsed.path).name
        if parsed.scheme == "s3":
            boto3.client("s3").download_file(parsed.netloc, parsed.path.lstrip("/"), str(path))
        elif parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=60) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        else:
            raise ContractViolation(uri, None, f"unsupported URI scheme '{parsed.scheme}': use a path, s3:// or https://")
        yield path


def source_format(uri: str) -> str:
    name = urlparse(uri).path.lower()
    for suffix in FORMATS:
        if name.endswith(suffix):
            return suffix
    raise ContractViolation(uri, None, "unsupported format: expected .csv, .csv.gz or .parquet")


def _open_text_bytes(path: Path, fmt: str):
    return gzip.open(path, "rb") if fmt == ".csv.gz" else open(path, "rb")


def _header(uri: str, path: Path, fmt: str) -> list[str]:
    with _open_text_bytes(path, fmt) as handle:
        try:
            first = handle.readline(1 << 20)
        except (OSError, EOFError) as exc:
            raise ContractViolation(uri, None, f"cannot read the file: {exc}") from exc
    if not first.strip():
        raise ContractViolation(uri, None, "empty file")
    try:
        line = first.decode("utf-8").removeprefix("\ufeff")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as exc:
        raise _not_utf8(uri, fmt, 1, exc, 0) from exc
    names = [name.strip() for name in next(csv.reader([line]))]
    if len(names) == 1:
        found = [label for char, label in OTHER_DELIMITERS.items() if char in line]
        if found:
            raise ContractViolation(uri, None, f"the header is one field holding {found[0]}: the file is delimited by "
                                    f"{found[0]}, not ','", hint="save the file as comma-separated values")
    counts = Counter(names)
    twice = [name for name, n in counts.items() if n > 1]
    if twice:
        fields = [i + 1 for i, name in enumerate(names) if name == twice[0]]
        raise ContractViolation(uri, twice[0], f"duplicated header name: fields {fields} are all named '{twice[0]}'",
                                hint="give every column one unique name")
    return names


def _not_utf8(uri: str, fmt: str, line: int, exc: UnicodeDecodeError, line_offset: int) -> ContractViolation:
    where = "offset in the uncompressed text" if fmt == ".csv.gz" else "file offset"
    return ContractViolation(
        uri, None, f"bytes that are not UTF-8 at line {line}, byte {exc.start + 1} of the line "
                   f"({where} {line_offset + exc.start}): {exc.object[exc.start:exc.start + 4]!r}",
        hint="re-export the file as UTF-8")


def diagnose_csv(uri: str, path: Path, fmt: str, error: Exception) -> ContractViolation:
    """Scan a CSV that Arrow refused, line by line, for the first thing wrong with it."""
    header: list[str] | None = None
    state = {"line": 0, "offset": 0}

    def lines() -> Iterator[str]:
        with _open_text_bytes(path, fmt) as handle:
            for raw in handle:  # whole lines: a decoding error's position is within its line
                state["line"] += 1
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(uri, fmt, state["line"], exc, state["offset"]) from exc
                state["offset"] += len(raw)
                yield text.removeprefix("\ufeff") if state["line"] == 1 else text

    reader = csv.reader(lines())
    header = next(reader)
    record = next(reader, None)
    while record is not None:
        line = reader.line_num
        following = next(reader, None)
        if record and len(record) != len(header):
            if following is None and len(record) < len(header):
                return ContractViolation(uri, None, f"truncated last row: line {line} has {len(record)} of "
                                                    f"{len(header)} fields (the file ends mid-row)",
                                         hint="the export was cut short: export the file again")
            return ContractViolation(uri, None, f"line {line} has {len(record)} fields, the header has {len(header)}",
                                     hint="check the delimiter and the quoting of that line")
        record = following
    return ContractViolation(uri, None, f"cannot read the file: {error}")


@dataclass
class SourceStream:
    """A source opened for reading: its header's verdict, then its batches."""

    uri: str
    path: Path
    format: str
    columns: list[str]

    @property
    def pii_columns(self) -> list[str]:
        return [c for c in self.columns if is_pii(c)]

    def batches(self) -> Iterator[pa.RecordBatch]:
        wanted = [c.name for c in LAKE_COLUMNS if c.name in self.columns]
        if self.format == ".parquet":
            try:
                yield from pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ContractViolation(self.uri, None, f"cannot read the file as Parquet: {exc}") from exc
            return
        try:  # Arrow reads the first block on opening: a bad file can fail here already
            reader = pacsv.open_csv(
                pa.input_stream(self.path, compression="gzip" if self.format == ".csv.gz" else None),
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, column_names=self.columns, skip_rows=1),
                # A quoted value may hold a line break (valid CSV): the chunker must respect quotes.
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted, column_types=dict.fromkeys(wanted, pa.string()),
                    strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=True),
            )
            yield from reader
        except pa.ArrowInvalid as exc:
            raise diagnose_csv(self.uri, self.path, self.format, exc) from exc
        except OSError as exc:  # e.g. a gzip stream that ends early
            raise ContractViolation(self.uri, None, f"cannot read the file: {exc}") from exc


@contextlib.contextmanager
def open_source(uri: str) -> Iterator[SourceStream]:
    """Open a source for streaming; refuses unknown formats and malformed headers at once. Only
    reading the source is reported as the source's fault: the caller's own errors pass through."""
    fmt = source_format(uri)
    with contextlib.ExitStack() as stack:
        try:
            path = stack.enter_context(local_copy(uri))
            if fmt == ".parquet":
                try:
                    columns = pq.ParquetFile(path).schema_arrow.names
                except (pa.ArrowInvalid, OSError) as exc:
                    raise ContractViolation(uri, None, f"cannot read the file as Parquet: {exc}") from exc
            else:
                columns = _header(uri, path, fmt)
        except (OSError, EOFError) as exc:
            raise ContractViolation(uri, None, f"cannot read the file: {exc}") from exc
        yield SourceStream(uri, path, fmt, columns)
