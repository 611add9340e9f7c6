import socket

import pytest

from engagement_dagster.defs.resources.lake import LocalLake


@pytest.fixture
def lake_dir(tmp_path, monkeypatch):
    """A fresh local lake (and DuckDB warehouse) per test; the env var is what dbt reads."""
    root = tmp_path / "lake"
    root.mkdir()
    monkeypatch.setenv("ENGAGEMENT_LAKE_DIR", str(root))
    monkeypatch.setenv("ENGAGEMENT_ENV", "local")
    return root


@pytest.fixture
def lake(lake_dir):
    return LocalLake(root=str(lake_dir))


MODEL_WEEK = "2026-11-09"


@pytest.fixture(scope="session")
def model_input(tmp_path_factory):
    """The spine materialized once (30,000 customers) in its own lake: the dbt model-ready
    table, its roles from the manifest, and the generator's truth for the week."""
    import os

    import dagster as dg

    from engagement_dagster.core.data.snapshot import oracle_key
    from engagement_dagster.core.ml.feature_roles import MODEL_INPUT, read_roles
    from engagement_dagster.defs.dbt.assets import dbt_features
    from engagement_dagster.defs.dbt.project import engagement_dbt
    from engagement_dagster.defs.ingest.assets import raw_customers
    from engagement_dagster.defs.resources import build_resources

    root = tmp_path_factory.mktemp("model_lake")
    saved = os.environ.get("ENGAGEMENT_LAKE_DIR")
    os.environ["ENGAGEMENT_LAKE_DIR"] = str(root)
    try:
        resources = build_resources("local")
        result = dg.materialize([raw_customers, dbt_features], partition_key=MODEL_WEEK, resources=resources,
                                run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": 30_000}}}})
        assert result.success
        frame = resources["warehouse"].read_table(MODEL_INPUT)
        oracle = resources["lake"].read_parquet(oracle_key(MODEL_WEEK))
    finally:
        if saved is None:
            os.environ.pop("ENGAGEMENT_LAKE_DIR", None)
        else:
            os.environ["ENGAGEMENT_LAKE_DIR"] = saved
    return frame, read_roles(engagement_dbt.manifest_path), oracle


@pytest.fixture(scope="session")
def trained(model_input):
    """All six models fitted once on the 30,000-customer snapshot."""
    from engagement_dagster.core.ml.training import MODEL_KINDS, new_model, splits

    frame, roles, _ = model_input
    parts = splits(frame, roles)
    return {name: new_model(name, parts["train"], roles).fit(parts["train"], parts["valid"]) for name in MODEL_KINDS}


@pytest.fixture(scope="session")
def moto_server():
    """A real AWS API server (moto) on 127.0.0.1: boto3 and dbt-athena talk to it over HTTP."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_endpoint(moto_server, monkeypatch):
    """Dummy credentials and every AWS client pointed at the moto server."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": moto_server}.items():
        monkeypatch.setenv(name, value)
    return moto_server


KB_WEEKS = ("2026-11-09", "2026-11-16")
KB_CUSTOMERS = 3_000


KB_RUN_FACTS: dict = {}  # what kb_weeks' runs did that their results do not show


@pytest.fixture(scope="session")
def kb_weeks(tmp_path_factory):
    """Two consecutive weeks of the whole graph (3,000 customers), knowledge base included, in their
    own lake; then the second week's kb_index materialized again. Yields (root, lake, the second
    week's result, the re-materialization's result, the index files before it)."""
    import dagster as dg

    from engagement_dagster.core.kb import embeddings
    from engagement_dagster.definitions import defs
    from engagement_dagster.defs.kb.assets import kb_index
    from engagement_dagster.defs.resources import build_resources

    root = tmp_path_factory.mktemp("kb_lake")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENGAGEMENT_LAKE_DIR", str(root))
        patch.setenv("ENGAGEMENT_ENV", "local")
        patch.setattr(embeddings, "_DEFAULT", {})  # these runs load the model themselves (KB_RUN_FACTS)
        resources = build_resources("local")
        for week in KB_WEEKS:
            result = dg.materialize(
                defs.assets, partition_key=week, resources=resources, raise_on_error=False,
                run_config={"ops": {"ingest__raw_customers": {"config": {"n_customers": KB_CUSTOMERS}}}})
            assert result.success
        embedder = embeddings.default_embedder()
        KB_RUN_FACTS["embedder_loaded_in"] = embedder.loaded_in if embedder is not None else None
        files = index_files(root)
        again = dg.materialize([kb_index], partition_key=KB_WEEKS[-1], resources=resources)
        yield root, LocalLake(root=str(root)), result, again, files


@pytest.fixture(scope="session")
def kb_run_facts(kb_weeks) -> dict:
    """What kb_weeks' runs did that their results do not show (which thread loaded the KB's model)."""
    return KB_RUN_FACTS


def index_files(root) -> dict[str, tuple[bytes, int, int]]:
    """Every file of the knowledge-base index under a lake root: bytes, mtime and inode."""
    base = root / "kb" / "index"
    return {str(p.relative_to(base)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(base.rglob("*")) if p.is_file()}
