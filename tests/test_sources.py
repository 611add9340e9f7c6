"""Real files, any size: malformed files refused for the right reason, the streaming path equal to
the in-memory path byte for byte, row numbers that point at the bad row in a multi-chunk file."""

import gzip

import pyarrow as pa
import pytest

from engagement_dagster.core.data import snapshot, sources
from engagement_dagster.core.data.contract import CONTRACT, CONTRACT_COLUMNS, ContractViolation
from engagement_dagster.core.data.generator import generate_snapshot
from tests.seed_export import write_seed_export

N = 3_000


@pytest.fixture
def seed_csv(tmp_path):
    path = tmp_path / "customer_engagement_dataset_extended.csv"
    write_seed_export(path, N, seed=3)
    return path


@pytest.fixture
def small_chunks(monkeypatch):
    """Many CSV blocks and row groups, none aligned with the other."""
    monkeypatch.setattr(sources, "CSV_BLOCK_BYTES", 64 << 10)
    monkeypatch.setattr(snapshot, "ROW_GROUP_ROWS", 1_000)


def refusal(uri) -> ContractViolation:
    with pytest.raises(ContractViolation) as info:
        snapshot.ingest_source(str(uri), uri.parent / "out.parquet")
    assert str(uri) in str(info.value)
    return info.value


def test_the_seed_export_loads_as_is(seed_csv, tmp_path, small_chunks):
    result = snapshot.ingest_source(str(seed_csv), tmp_path / "raw.parquet")
    assert result.rows == N and result.pii_columns_dropped == []
    written = pa.parquet.read_table(tmp_path / "raw.parquet")
    assert written.column_names[:42] == list(CONTRACT_COLUMNS)
    assert pa.parquet.ParquetFile(tmp_path / "raw.parquet").metadata.num_row_groups == 3


def test_chunked_and_in_memory_paths_write_identical_files(seed_csv, tmp_path, small_chunks):
    chunked = snapshot.ingest_source(str(seed_csv), tmp_path / "chunked.parquet", chunked=True)
    whole = snapshot.ingest_source(str(seed_csv), tmp_path / "whole.parquet", chunked=False)
    assert chunked.rows == whole.rows == N
    assert (tmp_path / "chunked.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    # A frame in memory (typed by pandas, not text) lands as the same bytes as its CSV.
    frame = generate_snapshot(2_500, "2026-11-09").customers
    frame.to_csv(tmp_path / "generated.csv.gz", index=False)
    snapshot.write_snapshot([pa.Table.from_pandas(frame)], "frame", tmp_path / "from_frame.parquet")
    snapshot.ingest_source(str(tmp_path / "generated.csv.gz"), tmp_path / "from_csv.parquet")
    assert (tmp_path / "from_frame.parquet").read_bytes() == (tmp_path / "from_csv.parquet").read_bytes()


def test_row_numbers_count_across_chunks(seed_csv, small_chunks):
    lines = seed_csv.read_text().splitlines()
    fields = lines[2_500].split(",")  # data row 2,500, far past the first 64 KiB block
    fields[CONTRACT_COLUMNS.index("peak_activity_hour")] = "24"
    lines[2_500] = ",".join(fields)
    seed_csv.write_text("\n".join(lines) + "\n")
    error = refusal(seed_csv)
    assert (error.column, error.rows, error.examples) == ("peak_activity_hour", 1, [2_500])
    assert "above the maximum 23: the contract's scale is 0–23 (an hour of the day)" in error.reason


def test_duplicate_ids_anywhere_in_the_file_are_refused_with_their_rows(seed_csv, small_chunks):
    lines = seed_csv.read_text().splitlines()
    first_id = lines[1].split(",")[0]
    lines[2_900] = ",".join([first_id, *lines[2_900].split(",")[1:]])
    seed_csv.write_text("\n".join(lines) + "\n")
    error = refusal(seed_csv)
    assert (error.column, error.reason, error.examples) == ("customer_id", "duplicate customer_id", [2_900])


def test_a_duplicated_header_name_is_named(seed_csv):
    lines = seed_csv.read_text().splitlines()
    lines = [line + ",0" for line in lines]
    lines[0] = lines[0].removesuffix(",0") + ",age"
    seed_csv.write_text("\n".join(lines) + "\n")
    error = refusal(seed_csv)
    assert error.column == "age" and "duplicated header name: fields [2, 43]" in error.reason


@pytest.mark.parametrize(("sep", "named"), [(";", "';' (semicolon)"), ("\t", "a tab")])
def test_a_wrong_delimiter_is_named(tmp_path, sep, named):
    path = tmp_path / "customers.csv"
    write_seed_export(tmp_path / "ok.csv", 50).to_csv(path, sep=sep, index=False)
    error = refusal(path)
    assert f"the file is delimited by {named}, not ','" in error.reason


def test_bytes_that_are_not_utf8_are_located(seed_csv):
    data = seed_csv.read_bytes().split(b"\n")
    data[5] += b"\xe9t\xe9"  # Latin-1 bytes appended to the last field of line 6
    seed_csv.write_bytes(b"\n".join(data))
    offset = sum(len(line) + 1 for line in data[:5]) + len(data[5]) - 3
    error = refusal(seed_csv)
    assert error.reason.startswith(f"bytes that are not UTF-8 at line 6, byte {len(data[5]) - 2} of the line "
                                   f"(file offset {offset}): b'\\xe9t\\xe9")
    assert "re-export the file as UTF-8" in str(error)


def test_quoted_line_breaks_and_upper_case_extensions_are_read(tmp_path, small_chunks):
    """Valid CSV the reader must take: a quoted value with a line break (in a column the
    platform does not read), wherever a block boundary falls, and a `.CSV.GZ` name."""
    frame = write_seed_export(tmp_path / "ok.csv", N, seed=4)
    frame.insert(1, "notes", "first line\nsecond line")
    path = tmp_path / "EXPORT.CSV.GZ"
    with gzip.open(path, "wt") as handle:
        frame.to_csv(handle, index=False)
    assert snapshot.ingest_source(str(path), tmp_path / "out.parquet").rows == N


def test_a_number_too_large_for_a_whole_number_is_refused(seed_csv):
    lines = seed_csv.read_text().splitlines()
    fields = lines[7].split(",")
    fields[CONTRACT_COLUMNS.index("followers_count")] = "1e20"
    lines[7] = ",".join(fields)
    seed_csv.write_text("\n".join(lines) + "\n")
    error = refusal(seed_csv)
    assert (error.column, error.examples, error.reason) == ("followers_count", [7], "too large for a whole number")


def test_a_truncated_last_row_names_its_line(tmp_path):
    path = tmp_path / "customers.csv.gz"
    text = write_seed_export(tmp_path / "ok.csv", 200).to_csv(index=False)
    with gzip.open(path, "wt") as handle:
        handle.write(text[: text.rstrip("\n").rindex("\n") + 80])  # the export was cut 80 bytes into its last row
    error = refusal(path)
    assert "truncated last row: line 201 has" in error.reason and "of 42 fields" in error.reason
    assert "export the file again" in str(error)


def test_a_row_with_the_wrong_number_of_fields_names_its_line(seed_csv):
    lines = seed_csv.read_text().splitlines()
    lines[99] += ",surplus"  # data row 99, line 100
    seed_csv.write_text("\n".join(lines) + "\n")
    assert refusal(seed_csv).reason == "line 100 has 43 fields, the header has 42"


def test_missing_required_column_and_empty_files(tmp_path):
    frame = write_seed_export(tmp_path / "ok.csv", 20)
    frame.drop(columns=["tenure_months"]).to_csv(tmp_path / "short.csv", index=False)
    assert refusal(tmp_path / "short.csv").column == "tenure_months"
    (tmp_path / "empty.csv").write_text("")
    assert refusal(tmp_path / "empty.csv").reason == "empty file"
    (tmp_path / "header_only.csv").write_text(",".join(frame.columns) + "\n")
    assert refusal(tmp_path / "header_only.csv").reason == "no data rows"


def test_drift_is_a_warning_not_a_refusal():
    """A column without a limit of meaning that moves week over week warns (non-blocking)."""
    def profile(trend_mean):
        columns = {c.name: {"nulls": 0, "min": c.min or 0.0, "max": c.min or 0.0, "mean": c.min or 0.0, "std": 0.2}
                   for c in CONTRACT}
        columns["last_7_day_engagement_trend"] = {"nulls": 0, "min": -1.3, "max": 1.3, "mean": trend_mean, "std": 0.4}
        return {"rows": 1000, "distinct_customer_ids": 1000, "columns_present": list(CONTRACT_COLUMNS),
                "columns": columns}

    outcomes = {o.name: o for o in snapshot.quality_checks(profile(0.5), profile(0.0))}
    drift = outcomes["distribution_drift"]
    assert not drift.passed and not drift.blocking and "last_7_day_engagement_trend" in drift.description
    assert all(o.passed for name, o in outcomes.items() if name != "distribution_drift")
    first_week = {o.name: o for o in snapshot.quality_checks(profile(0.5), None)}
    assert first_week["distribution_drift"].passed and "no previous week" in first_week["row_count_change"].description
