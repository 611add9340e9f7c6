from pathlib import Path

import pyarrow.parquet as pq
import pytest

from engagement_dagster.core.data.contract import CONTRACT_COLUMNS, PII_COLUMNS, ContractViolation
from engagement_dagster.core.data.generator import generate_snapshot
from engagement_dagster.core.data.snapshot import ingest_source


def prepare_snapshot(path: str):
    """A file through the contract as `raw_customers` takes it: the typed frame, the PII dropped."""
    out = Path(path).with_name("ingested.parquet")
    result = ingest_source(path, out)
    return pq.read_table(out).to_pandas(), result.pii_columns_dropped


@pytest.fixture(scope="module")
def customers():
    return generate_snapshot(500, "2026-11-09").customers


def _csv(tmp_path, frame, name="customers.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


def test_seed_platform_42_column_csv_loads_as_is(tmp_path, customers):
    path = _csv(tmp_path, customers[list(CONTRACT_COLUMNS)], "customer_engagement_dataset_extended.csv")
    frame, dropped = prepare_snapshot(path)
    assert len(frame) == 500 and dropped == []
    assert frame["customer_id"].dtype.kind in "OT" or str(frame["customer_id"].dtype).startswith(("str", "string"))
    uuid4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert frame["customer_id"].str.fullmatch(uuid4).all()  # the seed's export identifies customers by UUID
    assert frame["platform"].isna().all()  # optional columns exist, empty


def test_pii_is_dropped_and_never_written(tmp_path, customers):
    path = tmp_path / "with_pii.parquet"
    customers.to_parquet(path)
    frame, dropped = prepare_snapshot(str(path))
    assert set(dropped) == {"email", "full_name", "phone"}
    assert not set(frame.columns) & set(PII_COLUMNS)


@pytest.mark.parametrize(
    ("mutate", "column", "reason"),
    [
        (lambda f: f.drop(columns=["tenure_months"]), "tenure_months", "required column missing"),
        (lambda f: f.assign(age=f["age"].astype(object).where(f.index != 3, "forty")), "age", "not a number"),
        (lambda f: f.assign(customer_id=f["customer_id"].where(f.index != 10, f["customer_id"][0])),
         "customer_id", "duplicate customer_id"),
        (lambda f: f.assign(match_success_rate=f["match_success_rate"].where(f.index != 7, 150.0)),
         "match_success_rate", "above the maximum 100: the contract's scale is 0–100 (a percent)"),
        (lambda f: f.assign(engagement_score=f["engagement_score"].where(f.index != 7, 37.5)),
         "engagement_score", "above the maximum 1: the contract's scale is 0–1 (a fraction)"),
        (lambda f: f.assign(location=f["location"].where(f.index != 9, "=HYPERLINK(\"http://x\")")),
         "location", "not of the expected shape"),
        (lambda f: f.assign(customer_id=f["customer_id"].where(f.index != 9, "@SUM(A1)")),
         "customer_id", "not of the expected shape"),
        (lambda f: f.assign(gender=f["gender"].where(f.index != 2, "X")), "gender", "not one of"),
        (lambda f: f.assign(sessions_last_7_days=f["sessions_last_7_days"].astype(float).where(f.index != 4, 2.5)),
         "sessions_last_7_days", "not a whole number"),
    ],
)
def test_violations_name_file_column_rows_and_reason(tmp_path, customers, mutate, column, reason):
    path = _csv(tmp_path, mutate(customers.copy()))
    with pytest.raises(ContractViolation) as info:
        prepare_snapshot(path)
    error = info.value
    assert error.source == path and error.column == column and reason in error.reason
    message = str(error)
    assert path in message and column in message and reason in message
    if "missing" not in reason:
        assert error.rows == 1 and len(error.examples) == 1


def test_row_numbers_point_at_the_bad_data_row(tmp_path, customers):
    broken = customers.copy()
    broken.loc[41, "risk_score"] = -5
    path = _csv(tmp_path, broken)
    with pytest.raises(ContractViolation) as info:
        prepare_snapshot(path)
    assert info.value.examples == [42]  # 1-based data row, header not counted


@pytest.mark.parametrize("content", [b"", b"customer_id,age\n"])
def test_empty_file_is_refused(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(ContractViolation, match=r"empty file|no data rows|required column missing") as info:
        prepare_snapshot(str(path))
    assert str(path) in str(info.value)


def test_unreadable_and_unknown_formats(tmp_path):
    with pytest.raises(ContractViolation, match="cannot read"):
        prepare_snapshot(str(tmp_path / "missing.csv"))
    other = tmp_path / "customers.xlsx"
    other.write_bytes(b"x")
    with pytest.raises(ContractViolation, match="unsupported format"):
        prepare_snapshot(str(other))
