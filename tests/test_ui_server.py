"""What `make ui` serves: the Dagster webserver on this code location, asked over real HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from engagement_dagster.settings import PROJECT_ROOT

QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
}
"""


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tmp_path_factory.mktemp("dagster_home")
    binary = os.path.join(os.path.dirname(sys.executable), "dagster-webserver")
    process = subprocess.Popen(
        [binary, "-m", "engagement_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("dagster-webserver did not answer within 120 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the webserver may ignore SIGTERM for a while
        process.wait(timeout=30)


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 60
    while True:  # the code location may still be loading right after start-up
        with urllib.request.urlopen(request, timeout=30) as response:
            data = json.loads(response.read())["data"]
        if data["assetNodes"] or time.monotonic() > deadline:
            return data
        time.sleep(1)


def test_ui_shows_the_lineage_from_raw_customers_through_dbt_models_with_their_checks(webserver):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(webserver, QUERY)["assetNodes"]}
    assert nodes["features/stg_customers"]["groupName"] == "features"
    assert ["ingest", "raw_customers"] in [d["path"] for d in nodes["features/stg_customers"]["dependencyKeys"]]
    assert ["features", "customer_model_input"] in [d["path"] for d in nodes["models/churn_model"]["dependencyKeys"]]
    assert ["scoring", "customer_predictions"] in [d["path"] for d in nodes["scoring/predictions_final"]["dependencyKeys"]]

    def checks(key):
        return {c["name"]: c["blocking"] for c in nodes[key]["assetChecksOrError"]["checks"]}

    assert checks("ingest/raw_customers") == {name: True for name in
                                              ("schema", "unique_customer_ids", "null_rates", "value_ranges", "row_count_change")}
    assert any(name.startswith("not_null_customer_model_input") for name in checks("features/customer_model_input"))
    assert checks("models/churn_model") == {"promotion_gate": True}
