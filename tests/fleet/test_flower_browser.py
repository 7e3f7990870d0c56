"""Flower in a real browser: headless Chromium (Debian's) on the Tasks and Broker pages during a job.

Flower runs behind basic auth as its own process next to the session fleet; it switches the
workers' task events on (they are off by default), so the embed chunks of a job submitted
afterwards show up on its Tasks page, named by job and chunk, never by their texts.
The Tasks page screenshot is docs/flower-tasks.png (for the README).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from contract.celery_config import EMBED_TASK
from contract.lanes import build_queues
from localfleet.fleet import LOG_TAIL_CHARS, LocalFleet
from localfleet.redis_server import free_port
from producer import EmbeddingClient
from tests.fleet.test_jobs import unique_texts

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "flower-tasks.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
]
FLOWER_START_S = 60.0
PAGE_WAIT_S = 60.0
JOB_TEXTS = 20_000
JOB_TIMEOUT_S = 300.0
TASK_ROWS = 10  # of the 15 the Tasks page shows at once
# Flower's default hides the kwargs (the kwargsrepr naming job and chunk); the task's own page shows all.
TASKS_COLUMNS = "name,uuid,state,kwargs,received,runtime"
# The screenshot: a 1280x800 image of a 1680x1050 layout, wide enough for the columns above.
SCREEN = {"width": 1680, "height": 1050, "deviceScaleFactor": 1280 / 1680, "mobile": False}


@dataclass
class Flower:
    url: str
    authorization: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str) -> object:
        request = urllib.request.Request(self.url + path, headers={"Authorization": self.authorization})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def sees_worker(flower: Flower, worker: str) -> bool:
    """Flower has inspected the worker (its queues) and receives its events (its heartbeats)."""
    try:
        inspected = flower.api("/api/workers?refresh=1")
        alive = flower.api("/api/workers?status=1")
    except (OSError, ValueError):  # not listening yet, or an empty answer
        return False
    return (
        isinstance(inspected, dict)
        and worker in inspected
        and isinstance(alive, dict)
        and bool(alive.get(worker))
    )


def wait_for_worker(flower: Flower, worker: str) -> None:
    deadline = time.monotonic() + FLOWER_START_S
    while time.monotonic() < deadline:
        if flower.process.poll() is not None:
            pytest.fail(f"Flower exited with {flower.process.returncode}:\n{flower.log_tail()}")
        if sees_worker(flower, worker):
            return
        time.sleep(0.5)
    pytest.fail(f"Flower did not see worker {worker} within {FLOWER_START_S}s:\n{flower.log_tail()}")


def assert_auth_required(flower: Flower) -> None:
    try:
        urllib.request.urlopen(f"{flower.url}/api/workers", timeout=30).close()
    except urllib.error.HTTPError as exc:
        assert exc.code == 401, exc
    else:
        pytest.fail("Flower answered without credentials")


def enable_task_events(client: EmbeddingClient, workers: list[str]) -> None:
    """What Flower broadcasts every 5 s from its start; sent now and acknowledged, so that the
    job's first chunks (received before Flower's first broadcast) appear on its Tasks page too."""
    replies = client.celery.control.enable_events(destination=workers, reply=True, timeout=10)
    assert sorted(name for reply in replies for name in reply) == sorted(workers), replies


@pytest.fixture
def flower(fleet: LocalFleet, client: EmbeddingClient, tmp_path: Path) -> Iterator[Flower]:
    """Flower behind basic auth on a free port, watching the session fleet; events off again after."""
    port, password = free_port(), secrets.token_urlsafe(16)
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    log = tmp_path / "flower.log"
    command = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}"]
    command.append("--address=127.0.0.1")
    env = {
        **os.environ,
        **fleet.env,
        "FLOWER_BASIC_AUTH": f"admin:{password}",
        "FLOWER_TASKS_COLUMNS": TASKS_COLUMNS,
    }
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=sink, stderr=sink)
    flower = Flower(f"http://127.0.0.1:{port}", f"Basic {token}", process, log)
    try:
        wait_for_worker(flower, fleet.worker.name)
        assert_auth_required(flower)
        enable_task_events(client, [node.name for node in fleet.nodes])
        yield flower
    finally:
        flower.stop()
        # Flower leaves task events on; the rest of the session runs with the fleet's default.
        client.celery.control.disable_events(destination=[node.name for node in fleet.nodes])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: run localfleet/install-chromium.sh "
            "(Debian's chromium and chromium-driver packages)"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in [*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def authorize(driver: WebDriver, flower: Flower) -> None:
    """Every request of the page (the tasks table's XHRs too) carries the basic-auth header."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", SCREEN)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": flower.authorization}}
    )


def task_rows(driver: WebDriver, job_id: str) -> list[str]:
    """Ids of this job's rows in the tasks table; asks the table for fresh rows when too few."""
    rows = driver.find_elements(By.CSS_SELECTOR, f"#tasks-table tbody tr[id^='{job_id}.']")
    if len(rows) < TASK_ROWS:
        driver.execute_script("$('#tasks-table').DataTable().ajax.reload(null, false);")
        return []
    return [row.get_attribute("id") or "" for row in rows]


def table_idle(driver: WebDriver) -> bool:
    indicator = driver.find_elements(By.ID, "tasks-table_processing")
    return not indicator or not indicator[0].is_displayed()


def check_tasks_page(driver: WebDriver, flower: Flower, job_id: str, texts: list[str]) -> None:
    """The job's chunks listed as embed tasks, by job and chunk number, none of its texts on the page."""
    driver.get(f"{flower.url}/tasks")
    wait = WebDriverWait(driver, PAGE_WAIT_S, poll_frequency=1.0)
    ids = wait.until(lambda driver: task_rows(driver, job_id), f"no tasks of job {job_id} on /tasks")
    wait.until(table_idle, "the tasks table kept loading")
    rows = driver.find_elements(By.CSS_SELECTOR, f"#tasks-table tbody tr[id^='{job_id}.']")
    names = {row.find_element(By.CSS_SELECTOR, "td:first-child").text for row in rows}
    assert names == {EMBED_TASK}, names
    assert all(identifier.removeprefix(f"{job_id}.").isdigit() for identifier in ids), ids
    assert f"job {job_id} chunk " in driver.page_source  # the kwargsrepr stands in for the payload
    assert_no_text(driver, texts)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT))
    driver.get(f"{flower.url}/task/{ids[-1]}")  # every field Flower keeps of one task
    WebDriverWait(driver, PAGE_WAIT_S).until(lambda driver: driver.find_elements(By.ID, "task-page"))
    assert_no_text(driver, texts)


def assert_no_text(driver: WebDriver, texts: list[str]) -> None:
    source = driver.page_source
    leaked = [text for text in texts if text in source]
    assert not leaked, f"{len(leaked)} submitted texts on {driver.current_url}, e.g. {leaked[0]!r}"


def check_broker_page(driver: WebDriver, flower: Flower, lanes: list[str]) -> None:
    """Both lanes' queues listed, once Flower has inspected which queues the workers consume."""
    flower.api("/api/workers?refresh=1")
    driver.get(f"{flower.url}/broker")  # returns once the page (rendered by Flower, no XHR) has loaded
    page = driver.find_element(By.TAG_NAME, "body").text
    assert driver.find_elements(By.ID, "queue-table"), f"no queue table on /broker:\n{page[:1000]}"
    queues = [
        cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr td:first-child")
    ]
    assert set(lanes) <= set(queues), queues


def test_flower_shows_the_embed_tasks_of_a_running_job_and_both_lanes(
    browser: WebDriver, flower: Flower, client: EmbeddingClient
) -> None:
    authorize(browser, flower)
    texts = unique_texts(JOB_TEXTS)
    job = client.submit(texts, priority="bulk")  # after Flower has switched the worker's task events on
    try:
        check_tasks_page(browser, flower, job.id, texts)
        record = job.status()
        check_broker_page(browser, flower, build_queues(record.model, record.fingerprint))
    except BaseException:
        job.cancel()  # a failed check leaves no 20,000-text backlog to the session's next tests
        raise
    assert job.wait(timeout=JOB_TIMEOUT_S).state.value == "done"
