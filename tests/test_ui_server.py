"""What `make ui` serves: the Dagster webserver on this code location, asked over real HTTP."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest

from engagement_dagster.core.settings import PROJECT_ROOT

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


def serving(url: str, seconds: float) -> bool:
    """Whether the Dagster webserver at ``url`` answers /server_info within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


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
        if not serving(url, 120):
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
    predictions_final_deps = [d["path"] for d in nodes["scoring/predictions_final"]["dependencyKeys"]]
    assert ["scoring", "customer_predictions"] in predictions_final_deps

    def checks(key):
        return {c["name"]: c["blocking"] for c in nodes[key]["assetChecksOrError"]["checks"]}

    raw_checks = ("schema", "unique_customer_ids", "null_rates", "value_ranges", "row_count_change")
    assert checks("ingest/raw_customers") == {**{name: True for name in raw_checks}, "distribution_drift": False,
                                              "freshness": False}  # a stale week alerts, never blocks
    assert any(name.startswith("not_null_customer_model_input") for name in checks("features/customer_model_input"))
    assert checks("models/churn_model") == {"promotion_gate": False}  # a refused challenger warns, never stops


def chromium_path() -> str | None:
    found = os.environ.get("ENGAGEMENT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("ENGAGEMENT_REQUIRE_BROWSER"):
        pytest.fail("no Chromium found, and ENGAGEMENT_REQUIRE_BROWSER is set (CI): `make browser` installs it")
    return found


@contextmanager
def dagster_page(base_url: str, browser_path: str):
    """A Chromium page on the Dagster UI at `base_url`, and `open_page(path)`, which loads a page and
    checks that no dialog covers it. Every assertion waits up to 30 s (a busy 2-core machine)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # On localhost Dagster opens a modal "Join the Dagster community" dialog (CommunityNux)
            # 1 s after each page mounts, often after `networkidle`, until it is dismissed; its
            # backdrop then swallows our clicks. Dismissing it stores localStorage
            # communityNux = "1": seed that before any page loads, so it never opens.
            context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            page = context.new_page()
            # Should it open all the same (a renamed key in a Dagster upgrade), Playwright skips
            # it before any action or assertion.
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())

            def open_page(path):
                page.goto(f"{base_url}/{path}", wait_until="networkidle")
                expect(page.locator(".bp5-overlay-backdrop")).to_have_count(0)  # no dialog over the page

            yield page, open_page
        finally:
            browser.close()


def test_a_browser_shows_the_lineage_and_the_checks(webserver, tmp_path):
    """The pages an operator opens in `make ui`, rendered by a real Chromium: the asset lineage
    around the model-ready table, and the checks of raw_customers and of the dbt model."""
    browser_path = chromium_path()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (set ENGAGEMENT_CHROMIUM, or run `make browser`)")
    from playwright.sync_api import expect

    with dagster_page(webserver, browser_path) as (page, open_page):
        open_page("assets/features/customer_model_input?view=lineage&lineageScope=neighbors&lineageDepth=2")
        graph = page.locator("body")
        for node in ("raw_customers", "stg_customers", "customer_features", "churn_model", "ltv_model",
                     "segment_model", "predictions_final"):
            expect(graph.get_by_text(node, exact=True).filter(visible=True).first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(tmp_path / "lineage.png"))

        open_page("assets/features/customer_model_input?view=checks")
        # The check list middle-truncates long names: pick the row, then read its full name.
        page.get_by_text("columns_within", exact=False).filter(visible=True).first.click(timeout=30_000)
        expect(page.get_by_text("columns_within_meta_range_customer_model_input_", exact=True)
               .filter(visible=True).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("holds no null and no value outside", exact=False).filter(visible=True).first
               ).to_be_visible()  # the test's meta.description, shown as the check's
        page.screenshot(path=str(tmp_path / "checks.png"))

        open_page("assets/ingest/raw_customers?view=checks")
        for check in ("schema", "unique_customer_ids", "null_rates", "value_ranges", "row_count_change"):
            expect(page.get_by_text(check, exact=True).filter(visible=True).first).to_be_visible(timeout=30_000)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_make_ui_serves_and_stops_within_seconds(tmp_path, stop_signal):
    """`make ui` (python -m engagement_dagster.ui): dagster dev with its webserver, daemon and code
    server, stopped by Ctrl-C or SIGTERM in a few seconds, processes and all; no warning at start-up
    (a missing dagster.yaml, Dagster's Beta/Preview/Supersession notes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home, log = tmp_path / "dagster_home", tmp_path / "ui.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "engagement_dagster.ui", "--port", str(port)],
                                   cwd=PROJECT_ROOT, env={**os.environ, "DAGSTER_HOME": str(home)},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if not serving(f"http://127.0.0.1:{port}", 180):
            pytest.fail(f"make ui did not answer within 180 s:\n{log.read_text()[-3000:]}")
        stopped_at = time.monotonic()
        process.send_signal(stop_signal)
        process.wait(timeout=30)
        seconds = time.monotonic() - stopped_at
        time.sleep(1)  # dagster dev runs in its own process group: find what is left of it by the port
        left = subprocess.run(["pgrep", "-f", f"(-p|--port) {port}"], check=False, capture_output=True,
                              text=True).stdout.split()
        assert seconds < 15 and left == [], (seconds, left)
        assert (home / "dagster.yaml").exists() and "No dagster instance configuration file" not in log.read_text()
        warnings = [line for line in log.read_text().splitlines() if "Warning" in line]
        assert warnings == [], warnings  # start-up prints nothing a user has to decode
    finally:
        subprocess.run(["pkill", "-9", "-f", f"(-p|--port) {port}"], check=False)
