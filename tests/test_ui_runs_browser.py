"""After `make run` and `make ui`, what an operator sees in a real browser: the runs and the model.

`make run` (`python -m engagement_dagster.cli run`, 3,000 customers, two weeks ending 2026-11-02: a
backfill) on a temporary DAGSTER_HOME and lake, then `make ui`'s webserver on the same instance
(`dagster-webserver -m engagement_dagster.definitions`), rendered by Chromium:

- Jobs → weekly_refresh → Runs lists one successful run per week of the history, each with its
  partition and its backfill; the backfill's page (and Overview → Backfills) shows it succeeded,
  two partitions of weekly_refresh.
- The churn model's asset page shows its promotion decision, its headline test metrics (AUC, PR-AUC,
  Brier, ECE, the baseline's AUC), the short model card inline (metrics beside the naive baseline and
  the oracle ceiling, the calibration), and the full model card behind its link.
"""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from engagement_dagster.core.settings import PROJECT_ROOT
from tests.test_ui_server import chromium_path, dagster_page, serving

HISTORY = ("2026-10-26", "2026-11-02")  # the partitions' first week (the default), and the next
# cli.location_name() with $DAGSTER_CODE_LOCATION_NAME unset: `make ui` names the location after the module.
LOCATION = "engagement_dagster.definitions"
NUMBER = re.compile(r"^\s*-?\d+(\.\d+)?(e-?\d+)?\s*$")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`make run WEEKS=2 WEEK=2026-11-02 CUSTOMERS=3000`, then `make ui`'s webserver on that instance and lake."""
    home, lake = tmp_path_factory.mktemp("dagster_home"), tmp_path_factory.mktemp("lake")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ENGAGEMENT_LAKE_DIR": str(lake), "ENGAGEMENT_ENV": "local",
           "ENGAGEMENT_KB_EMBEDDINGS": "off",  # the UI, not the embeddings, is under test
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    for name in ("ENGAGEMENT_FIRST_WEEK", "ENGAGEMENT_SOURCE_URI", "DAGSTER_CODE_LOCATION_NAME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "engagement_dagster.cli", "run", "--customers", "3000",
                           "--weeks", "2", "--week", HISTORY[-1]],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = os.path.join(os.path.dirname(sys.executable), "dagster-webserver")
    process = subprocess.Popen(
        [binary, "-m", "engagement_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not serving(url, 120):
            pytest.fail("dagster-webserver did not answer within 120 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the webserver may ignore SIGTERM for a while
        process.wait(timeout=30)


@pytest.fixture
def browser_page(request):
    """A Chromium page on the webserver, and `open_page(path)`, which loads a page with no dialog over it."""
    browser_path = chromium_path()
    if browser_path is None:  # skipped before `make run`, not after it
        pytest.skip("no Chromium on this machine (set ENGAGEMENT_CHROMIUM, or run `make browser`)")
    ui = request.getfixturevalue("ui")
    with dagster_page(ui, browser_path) as (page, open_page):
        yield page, open_page


def test_the_job_page_lists_a_successful_run_per_week_of_the_backfill(browser_page, tmp_path):
    from playwright.sync_api import expect

    page, open_page = browser_page
    open_page("jobs")  # Jobs, in the left navigation: the code location's jobs
    page.get_by_role("link", name="weekly_refresh").click(timeout=30_000)
    expect(page).to_have_url(re.compile(rf"/locations/{re.escape(LOCATION)}/jobs/weekly_refresh/?$"), timeout=30_000)
    page.get_by_role("tab", name="Runs").click(timeout=30_000)
    expect(page).to_have_url(re.compile(rf"/locations/{re.escape(LOCATION)}/jobs/weekly_refresh/runs$"),
                             timeout=30_000)
    expect(page.locator(".bp5-overlay-backdrop")).to_have_count(0)

    # The runs list is a virtualized table: a row is a [data-index] element.
    rows = page.locator("[data-index]").filter(has_text="weekly_refresh")
    expect(rows.filter(has_text=f"partition: {HISTORY[0]}")).to_be_visible(timeout=30_000)
    expect(rows).to_have_count(len(HISTORY))
    backfills = set()
    for week in HISTORY:
        row = rows.filter(has_text=f"partition: {week}")
        expect(row).to_have_count(1)
        expect(row.get_by_text("Success", exact=True)).to_be_visible()
        link = row.locator('a[href^="/runs/b/"]')  # "Backfill: <id>"
        expect(link).to_have_count(1)
        backfills.add(link.get_attribute("href"))
    page.screenshot(path=str(tmp_path / "job_runs.png"))
    (backfill,) = backfills  # both weeks are runs of one backfill

    # Its page, by the link's own address (a click on a busy machine may land after the URL check).
    open_page(backfill.lstrip("/"))
    expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible(timeout=30_000)
    expect(page.get_by_text(f"{len(HISTORY)} partitions", exact=True).first).to_be_visible()
    expect(page.get_by_text("100% completed", exact=True).first).to_be_visible()
    expect(page.get_by_text("weekly_refresh", exact=True).first).to_be_visible()
    page.screenshot(path=str(tmp_path / "backfill.png"))

    open_page("overview/backfills")  # Dagster 1.13 redirects it to the Runs page's Backfills view
    expect(page).to_have_url(re.compile(r"/runs\?view=backfills$"), timeout=30_000)
    row = page.locator("[data-index]").filter(has=page.locator(f'a[href="{backfill}"]'))
    expect(row.get_by_text(f"{len(HISTORY)} partitions", exact=True)).to_be_visible(timeout=30_000)
    expect(row.get_by_text("weekly_refresh_partition_set", exact=True)).to_be_visible()
    expect(row.get_by_text("Success", exact=True)).to_be_visible()
    page.screenshot(path=str(tmp_path / "backfills.png"))


def test_the_churn_model_page_shows_its_metrics_and_its_model_card(browser_page, tmp_path):
    from playwright.sync_api import expect

    page, open_page = browser_page
    open_page("assets/models/churn_model")

    def metadata(key):
        """The value cell of the latest materialization's metadata entry `key`."""
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))
        expect(row).to_have_count(1, timeout=30_000)
        return row.get_by_role("cell").nth(2)  # key, timestamp, value

    expect(metadata("decision")).to_have_text(re.compile(r"^\s*(promoted|refused): .*naive baseline"))
    for key in ("test_auc", "test_pr_auc", "test_brier", "test_ece", "baseline_auc"):
        expect(metadata(key)).to_have_text(NUMBER)

    card = metadata("model_card")  # the short card, inline
    expect(card).to_contain_text(re.compile(r"^\s*(Promoted|Refused): "))
    expect(card.get_by_text("naive baseline", exact=True)).to_be_visible()
    expect(card.get_by_text("oracle ceiling", exact=True)).to_be_visible()
    for label in ("AUC", "PR-AUC", "Brier", "ECE"):
        cells = card.get_by_role("row").filter(has=page.get_by_role("cell", name=label, exact=True)).get_by_role("cell")
        expect(cells).to_have_count(4)  # test, model, naive baseline, oracle ceiling
        expect(cells.nth(1)).to_have_text(NUMBER)
    expect(card).to_contain_text(re.compile(r"Calibrated: [\d,]+ distinct probabilities for [\d,]+ test customers"))
    page.screenshot(path=str(tmp_path / "churn_model.png"), full_page=True)

    metadata("full_model_card").get_by_text("[Show Markdown]").click()  # the full card, behind a link
    dialog = page.get_by_role("dialog")
    for heading in ("churn_model", "Test metrics (test split only)", "Promotion gate",
                    "Churn drivers of each customer"):
        expect(dialog.get_by_role("heading", name=heading, exact=True)).to_be_visible(timeout=30_000)
    expect(dialog.get_by_text(f"snapshot week: {HISTORY[-1]}", exact=True)).to_be_visible()
    page.screenshot(path=str(tmp_path / "churn_model_card.png"))
