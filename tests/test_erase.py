"""Erasure of one customer (issue 13, item 3): on a copy of the two-week lake of the whole graph, and
on a versioned S3 bucket, a DynamoDB cache table and Athena's results location on a moto server."""

import hashlib
import hmac
import io
import json
import shutil
import time
from pathlib import Path

import boto3
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engagement_dagster.core.kb import documents as kb_documents
from engagement_dagster.core.kb import index as kb_index
from engagement_dagster.core.privacy import erase as erasure
from engagement_dagster.core.storage.lake import LocalStore, S3Store
from tests.conftest import KB_CUSTOMERS, KB_WEEKS

# A week the lake does not hold yet. The one after KB_WEEKS is not a partition until it has ended (a clock
# the tests do not control), so the week before them: the graph runs the same for either.
NEW_WEEK = "2026-11-02"
INJECTED = "## Customers to call this week"


def digest(root: Path, skip_audit: bool = False) -> dict[str, str]:
    """sha256 of every file under a lake root, hidden ones and the warehouse included."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not (skip_audit and p.relative_to(root).parts[0] == "audit")}


def pick_customer(root: Path) -> str:
    """An at-risk customer of the second week who is also in the first week's predictions."""
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(
            "select customer_id from at_risk_customers where snapshot_week = ? and customer_id in "
            "(select customer_id from predictions_final where snapshot_week = ?) order by customer_id limit 1",
            [KB_WEEKS[1], KB_WEEKS[0]]).fetchone()[0]


def name_in_documents(store: LocalStore | S3Store, week: str, customer_id: str) -> None:
    """Today's documents hold aggregates only; a document that lists customers (a call list) is made
    here, as kb_documents would write it (manifest sha256 updated), and the week's index rebuilt."""
    doc = kb_documents.document_key(week, "at_risk_analysis")
    text = store.read_bytes(doc).decode()
    text += (f"\n\n{INJECTED}\n\n| customer | churn probability |\n|---|---|\n| {customer_id} | 0.8123 |\n"
             "| someone-else | 0.7001 |\n")
    store.write_bytes(doc, text.encode())
    manifest = kb_documents.read_manifest(store, week)
    for entry in manifest["documents"]:
        if entry["key"] == doc:
            entry["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    store.write_bytes(kb_documents.manifest_key(week), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    assert kb_index.build_index(store, week).status == "rebuilt"


@pytest.fixture(scope="module")
def base(kb_weeks, tmp_path_factory):
    """The session's two-week lake, copied (the fixture's own lake is never modified), with one
    document naming the customer."""
    root = tmp_path_factory.mktemp("erase_base") / "lake"
    shutil.copytree(kb_weeks[0], root)
    customer = pick_customer(root)
    name_in_documents(LocalStore(root), KB_WEEKS[1], customer)
    return root, customer


@pytest.fixture
def lake(base, tmp_path, monkeypatch):
    root = tmp_path / "lake"
    shutil.copytree(base[0], root)
    monkeypatch.setenv("ENGAGEMENT_LAKE_DIR", str(root))
    monkeypatch.setenv("ENGAGEMENT_ENV", "local")
    monkeypatch.delenv(erasure.SALT_ENV, raising=False)
    return root, base[1]


def read(root: Path, key: str) -> pa.Table:
    return pq.read_table(root / key)


def test_find_traces_sees_the_customer_everywhere_before_erasure(lake):
    root, customer = lake
    traces = erasure.find_traces(LocalStore(root), root / "warehouse.duckdb", customer)
    text = "\n".join(traces)
    for week in KB_WEEKS:
        for key in (f"raw/customers/snapshot_week={week}/customers.parquet",
                    f"oracle/customers/snapshot_week={week}/truth.parquet",
                    f"predictions/snapshot_week={week}/shard=00.parquet"):
            assert f"lake:{key}: column customer_id (1 rows)" in traces, key
    assert f"lake:kb/snapshot_week={KB_WEEKS[1]}/at_risk_analysis.md: raw bytes" in traces
    index_files = kb_index.index_files_prefix(KB_WEEKS[1], kb_index.read_index_manifest(LocalStore(root), KB_WEEKS[1]))
    assert f"{index_files}chunks.parquet: column text" in text
    assert f"{index_files}bm25/vocab.index.json: every term" in text
    for table in ("predictions_final", "at_risk_customers", "stg_customers"):
        assert f"warehouse:main.{table}" in text
    assert erasure.find_traces(LocalStore(root), root / "warehouse.duckdb", "no-such-customer") == []


def test_dry_run_reports_and_changes_nothing(lake, capsys):
    root, customer = lake
    before = digest(root)
    report = erasure.erase(LocalStore(root), customer, warehouse_path=root / "warehouse.duckdb", dry_run=True)
    assert digest(root) == before  # not even the salt or an audit entry
    assert report.dry_run and report.audit_key is None and report.customer_hash is None
    targets = {c.target for c in report.changes}
    assert f"raw/customers/snapshot_week={KB_WEEKS[0]}/customers.parquet" in targets
    assert "main.predictions_final" in targets
    assert report.rows >= 2 * 3 + 3  # two weeks of raw, oracle and predictions; the marts; a document's line

    assert erasure.erase_main([customer, "--dry-run", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dry_run"] and printed["rows"] == report.rows
    assert digest(root) == before


def test_erasure_leaves_no_trace_and_keeps_everyone_else(lake):
    root, customer = lake
    store = LocalStore(root)
    files = [f"{prefix}/snapshot_week={week}/{name}" for week in KB_WEEKS for prefix, name in (
        ("raw/customers", "customers.parquet"), ("oracle/customers", "truth.parquet"),
        ("predictions", "shard=00.parquet"))]
    before = {key: read(root, key) for key in files}
    schemas = {key: pq.read_schema(root / key) for key in files}
    groups = {key: pq.ParquetFile(root / key).metadata.num_row_groups for key in files}
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        tables = [t for (t,) in con.execute("select schema_name || '.' || table_name from duckdb_tables()").fetchall()]
        others = {t: con.sql(f"select * from {t} where customer_id is distinct from ?", params=[customer]
                             ).to_arrow_table() for t in tables if "customer_id" in con.table(t).columns}
        views = con.execute("select view_name, sql from duckdb_views() where not internal").fetchall()
    doc_key = kb_documents.document_key(KB_WEEKS[1], "at_risk_analysis")
    doc_before = store.read_bytes(doc_key).decode()

    started = time.perf_counter()
    report = erasure.erase(store, customer, warehouse_path=root / "warehouse.duckdb")
    seconds = time.perf_counter() - started
    print(f"erasure of one customer from the two-week lake: {seconds:.2f} s, {report.rows} rows/lines")

    assert report.traces == [] and not report.unhandled
    assert erasure.find_traces(store, root / "warehouse.duckdb", customer) == []
    for key in files:
        after = read(root, key)
        mask = pc.not_equal(before[key].column("customer_id"), customer)
        assert after.num_rows == before[key].num_rows - 1 == KB_CUSTOMERS - 1
        assert after.equals(before[key].filter(mask))  # every other row, in its order, unchanged
        assert pq.read_schema(root / key).equals(schemas[key], check_metadata=True)
        assert pq.ParquetFile(root / key).metadata.num_row_groups == groups[key]
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        for table, rows in others.items():  # every other row, in its order
            assert con.sql(f"select * from {table}").to_arrow_table().equals(rows), table
        assert con.execute("select view_name, sql from duckdb_views() where not internal").fetchall() == views
    # The profile is recomputed from the rewritten snapshot.
    profile = json.loads(store.read_bytes(f"profiles/raw_customers/snapshot_week={KB_WEEKS[0]}.json"))
    assert profile["rows"] == profile["distinct_customer_ids"] == KB_CUSTOMERS - 1
    # The document lost the one line naming the customer; its manifest and the index follow it.
    doc_after = store.read_bytes(doc_key).decode()
    assert doc_after == "\n".join(line for line in doc_before.split("\n") if customer not in line)
    assert "someone-else" in doc_after
    entry = next(d for d in kb_documents.read_manifest(store, KB_WEEKS[1])["documents"] if d["key"] == doc_key)
    assert entry["sha256"] == hashlib.sha256(doc_after.encode()).hexdigest()
    assert kb_index.build_index(store, KB_WEEKS[1]).status == "unchanged"  # the index was rebuilt from it
    hits = kb_index.search(store, KB_WEEKS[1], "customers to call this week", k=3, mode="lexical")
    assert any(INJECTED.lstrip("# ") in p.text and customer not in p.text for p in hits)

    # The audit entry: when, where, how many, the id only as a salted hash.
    audit = [k for k in store.list_keys(erasure.AUDIT_PREFIX)]
    assert audit == [report.audit_key]
    raw_entry = store.read_bytes(report.audit_key).decode()
    entry = json.loads(raw_entry)
    salt = store.read_bytes(erasure.SALT_KEY).strip()
    assert customer not in raw_entry and entry["customer_hash"] != customer
    assert entry["customer_hash"] == hmac.new(salt, customer.encode(), hashlib.sha256).hexdigest()
    assert entry["salt_source"].startswith(f"lake object {erasure.SALT_KEY}")
    assert entry["rows"] == report.rows and set(entry["stores"]) == {"lake", "warehouse"}
    assert entry["erased_at"] and entry["verification"].startswith("0 traces")
    changed = {c["target"]: c["rows"] for c in entry["changes"]}
    assert changed[f"raw/customers/snapshot_week={KB_WEEKS[1]}/customers.parquet"] == 1
    assert changed["main.predictions_final"] == 2  # one row per week
    models = entry["models"]["trained_on_data_that_may_contain_the_customer"]
    assert set(models) == set(kb_documents.MODELS) and all(len(v) == 2 for v in models.values())
    assert "next weekly run" in entry["models"]["retraining"]
    assert erasure.erased(store, [customer, "someone-else"]) == [True, False]

    # Twice is a no-op: nothing but a new audit entry with 0 rows.
    files_before = digest(root, skip_audit=True)
    again = erasure.erase(store, customer, warehouse_path=root / "warehouse.duckdb")
    assert again.rows == 0 and again.changes == [] and again.traces == []
    assert digest(root, skip_audit=True) == files_before
    assert json.loads(store.read_bytes(again.audit_key))["rows"] == 0


def test_a_file_left_empty_stays_valid_with_its_schema_and_the_salt_can_come_from_the_environment(
        tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    table = pa.table({"customer_id": pa.array(["c-1"], pa.large_string()), "score": pa.array([0.5], pa.float32())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_bytes("predictions/snapshot_week=2026-11-09/shard=03.parquet", buffer.getvalue())
    store.write_bytes("notes/handover.json", b'{"customer": "c-1"}')  # a file erase cannot clean: reported
    monkeypatch.setenv(erasure.SALT_ENV, "pepper")
    report = erasure.erase(store, "c-1")
    after = pq.read_table(tmp_path / "predictions/snapshot_week=2026-11-09/shard=03.parquet")
    assert after.num_rows == 0 and after.schema.equals(table.schema, check_metadata=True)
    assert report.salt_source == f"environment variable {erasure.SALT_ENV}"
    assert report.customer_hash == hmac.new(b"pepper", b"c-1", hashlib.sha256).hexdigest()
    assert not store.exists(erasure.SALT_KEY)
    assert report.unhandled == ["notes/handover.json"] and report.traces == ["lake:notes/handover.json: raw bytes"]
    # "c-1" is not "c-10": ids are matched whole.
    assert erasure.find_traces(store, None, "c-10") == []


def test_erase_main_refuses_in_one_line(lake, capsys):
    for argv in (["bad id"], [], ["c-1", "--force"]):
        assert erasure.erase_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("erase refused: ") and err.count("\n") == 1, err


def test_the_weekly_refresh_runs_on_the_erased_lake(lake):
    import dagster as dg

    from engagement_dagster.definitions import defs
    from engagement_dagster.defs.resources import build_resources

    root, customer = lake
    assert erasure.erase_main([customer]) == 0
    result = dg.materialize(defs.assets, partition_key=NEW_WEEK, resources=build_resources("local"),
                            raise_on_error=False,
                            run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": KB_CUSTOMERS}}}})
    assert result.success
    # The synthetic source still holds the customer (ids are stable across weeks): ingest drops them,
    # so the new week does not bring them back, and says so.
    raw = result.asset_materializations_for_node("ingest__raw_customers")[0].metadata
    assert raw["erased_customers_dropped"].value == 1
    assert raw["dagster/row_count"].value == KB_CUSTOMERS - 1
    assert erasure.find_traces(LocalStore(root), root / "warehouse.duckdb", customer) == []
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("select count(distinct snapshot_week) from predictions_final").fetchone()[0] == 3


# ---------------------------------------------------------------------------------------------
# AWS: a versioned lake bucket, Athena's results, the DynamoDB cache (moto over HTTP)


@pytest.fixture
def s3_lake(base, aws_endpoint, monkeypatch):
    """The lake copied to a versioned bucket (the Terraform's lake bucket is versioned), with an
    Athena-style table file (no suffix) under warehouse/, a raw snapshot written twice (an older
    version holds the customer too), Athena results naming the customer, and a cache table."""
    from engagement_dagster.api.cache import create_table

    root, customer = base
    s3 = boto3.client("s3")
    for bucket in ("erase-lake", "erase-athena"):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = S3Store("erase-lake", "team/a", endpoint_url=aws_endpoint)
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "warehouse.duckdb":
            store.write_bytes(str(path.relative_to(root)), path.read_bytes())
    raw = f"raw/customers/snapshot_week={KB_WEEKS[0]}/customers.parquet"
    store.write_bytes(raw, (root / raw).read_bytes())  # a rerun of the week: a second version
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        marts = con.sql("select * from predictions_final").to_arrow_table()
    buffer = io.BytesIO()
    pq.write_table(marts, buffer, compression="snappy")
    athena_file = "warehouse/engagement/predictions_final/3f2c/snapshot_week=2026-11-16/20261123_0000_00000_abcd"
    store.write_bytes(athena_file, buffer.getvalue())
    results = S3Store("erase-athena", "results", endpoint_url=aws_endpoint)
    results.write_bytes("q1.csv", f'"customer_id","churn"\n"{customer}","0.81"\n'.encode())
    results.write_bytes("q1.csv.metadata", b"\x00metadata")
    results.write_bytes("q2.csv", b'"segment","customers"\n"Casual","12"\n')
    dynamodb = boto3.client("dynamodb")
    create_table(dynamodb, "erase-cache")
    for key in (f"{customer}#{'a' * 32}", f"{customer}#{'b' * 32}", f"someone-else#{'c' * 32}"):
        dynamodb.put_item(TableName="erase-cache", Item={"pk": {"S": key}, "value": {"S": "{}"},
                                                         "expires_at": {"N": "4102444800"}})
    monkeypatch.delenv(erasure.SALT_ENV, raising=False)
    return store, results, customer, raw, athena_file


def versions(store: S3Store, key: str) -> list[dict]:
    page = boto3.client("s3").list_object_versions(Bucket=store.bucket, Prefix=f"{store.prefix}/{key}")
    return [v for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] == f"{store.prefix}/{key}"]


def test_erasure_on_s3_deletes_old_versions_results_and_cache(s3_lake):
    store, results, customer, raw, athena_file = s3_lake
    extra = {"athena_results": results}
    before = erasure.find_traces(store, None, customer, extra_stores=extra)
    assert any("@" in t and raw in t for t in before)  # the older version of the raw file is seen too
    assert any(athena_file in t for t in before) and "athena_results:q1.csv: raw bytes" in before
    assert len(versions(store, raw)) == 2
    dry = erasure.erase(store, customer, dynamodb_table="erase-cache", extra_stores=extra, dry_run=True)
    assert dry.rows > 0 and len(versions(store, raw)) == 2 and not store.list_keys("audit/")

    old_index = kb_index.index_files_prefix(KB_WEEKS[1], kb_index.read_index_manifest(store, KB_WEEKS[1]))
    report = erasure.erase(store, customer, dynamodb_table="erase-cache", extra_stores=extra)
    assert report.traces == [] and not report.unhandled
    assert erasure.find_traces(store, None, customer, extra_stores=extra) == []
    # Only the new version of each rewritten object is left; the index's old files, none at all.
    new_index = kb_index.index_files_prefix(KB_WEEKS[1], kb_index.read_index_manifest(store, KB_WEEKS[1]))
    assert new_index != old_index and versions(store, f"{old_index}chunks.parquet") == []
    for key in (raw, athena_file, kb_documents.document_key(KB_WEEKS[1], "at_risk_analysis"),
                f"{new_index}chunks.parquet"):
        left = versions(store, key)
        assert len(left) == 1 and left[0]["IsLatest"], key
    assert store.read_parquet(raw).shape[0] == KB_CUSTOMERS - 1
    marts = pq.read_table(io.BytesIO(store.read_bytes(athena_file)))
    assert marts.num_rows == 2 * KB_CUSTOMERS - 2
    assert results.list_keys("") == ["q1.csv.metadata", "q2.csv"]
    assert not versions(results, "q1.csv")
    items = boto3.client("dynamodb").scan(TableName="erase-cache")["Items"]
    assert [i["pk"]["S"] for i in items] == [f"someone-else#{'c' * 32}"]
    changes = {(c.store, c.target): c for c in report.changes}
    assert changes[("cache", "dynamodb:erase-cache")].rows == 2
    assert changes[("lake", raw)].versions_deleted == 2  # the rerun's older version and the one replaced
    entry = json.loads(store.read_bytes(report.audit_key))
    assert set(entry["stores"]) == {"lake", "cache", "athena_results"} and customer not in json.dumps(entry)


def test_aws_refuses_what_it_cannot_erase(aws_endpoint, monkeypatch, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="refuse-lake")
    for name, value in {"ENGAGEMENT_ENV": "aws", "ENGAGEMENT_LAKE_BUCKET": "refuse-lake",
                        "ENGAGEMENT_GLUE_RAW_DATABASE": "refuse_raw", "ENGAGEMENT_GLUE_DATABASE": "refuse",
                        "ENGAGEMENT_ATHENA_WORKGROUP": "primary",
                        "ENGAGEMENT_ATHENA_STAGING": "s3://refuse-athena/results/",
                        "ENGAGEMENT_ATHENA_DATA": "s3://somewhere-else/warehouse/",
                        "ENGAGEMENT_API_CACHE": "off"}.items():
        monkeypatch.setenv(name, value)
    assert erasure.erase_main(["c-1"]) == 2
    assert "outside the lake" in capsys.readouterr().err

    monkeypatch.setenv("ENGAGEMENT_ATHENA_DATA", "s3://refuse-lake/warehouse/")
    glue = boto3.client("glue")
    glue.create_database(DatabaseInput={"Name": "refuse"})
    glue.create_table(DatabaseName="refuse", TableInput={
        "Name": "predictions_final", "Parameters": {"table_type": "ICEBERG"},
        "StorageDescriptor": {"Location": "s3://refuse-lake/warehouse/refuse/predictions_final/"}})
    assert erasure.erase_main(["c-1"]) == 2
    err = capsys.readouterr().err
    assert "Iceberg" in err and err.count("\n") == 1
    assert s3.list_objects_v2(Bucket="refuse-lake").get("KeyCount", 0) == 0  # no salt, no audit: nothing changed


def test_the_cache_key_layout_is_the_apis():
    from engagement_dagster.api import cache

    assert erasure.CACHE_PARTITION_KEY == cache.PARTITION_KEY
    assert cache.cache_key("c-1", {"x": 1.0}, {}).startswith("c-1" + erasure.CACHE_KEY_SEPARATOR)
