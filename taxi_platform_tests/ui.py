"""The real Dagster deployment for the daemon and browser tests: dagster-daemon (and dagster-webserver) as
subprocesses on a temporary DAGSTER_HOME, Debian's Chromium driven by Playwright, and waits on what the
instance records (run statuses, sensor ticks).

Chromium is Debian's (`/usr/bin/chromium`, `apt-get install chromium`; `.ci/run` installs it), never a
Playwright download. A missing browser fails the test with that message: it is not skipped.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("TAXI_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCATION = "taxi_platform"
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
BACKFILL_GOING_ON = (BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING)


def write_instance(home: Path) -> None:
    """The project's dagster.yaml (its concurrency pools and run settings) with every store in `home`,
    and a workspace.yaml loading the code location from the project."""
    config = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    config["local_artifact_storage"] = {
        "module": "dagster._core.storage.root",
        "class": "LocalArtifactStorage",
        "config": {"base_dir": str(home)},
    }
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    config["compute_logs"] = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(home / "logs")},
    }
    config["telemetry"] = {"enabled": False}
    config["run_coordinator"] = {  # the daemon starts a queued run within a second
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"dequeue_interval_seconds": 1},
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "taxi_platform.definitions",
                            "location_name": LOCATION,
                            "working_directory": str(PROJECT),
                        }
                    }
                ]
            }
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.loads(response.read())
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


class DagsterServices:
    """dagster-daemon, and dagster-webserver unless `webserver` is off, on `home` (a folder holding
    dagster.yaml and workspace.yaml), with `env`; logs in `home`. `url`: the webserver's."""

    def __init__(self, home: Path, env: dict[str, str], webserver: bool = True):
        self.home, self.env, self.webserver = home, {**env, "DAGSTER_HOME": str(home)}, webserver
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self.exit_codes: dict[str, int] = {}
        self.outlived: list[str] = []  # those whose process group outlived them (then killed)

    def _start(self, name: str, *command) -> None:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 (kept open by the process)
        self.processes[name] = subprocess.Popen(
            [str(c) for c in command],
            env=self.env,
            cwd=self.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def __enter__(self):
        workspace = ["-w", self.home / "workspace.yaml"]
        if self.webserver:
            self._start(
                "webserver", BIN / "dagster-webserver", "-h", "127.0.0.1", "-p", self.port, *workspace
            )
        self._start("daemon", BIN / "dagster-daemon", "run", *workspace)
        try:
            if self.webserver:
                self.wait_until_loaded()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def wait_until_loaded(self, timeout: float = 120) -> None:
        """Until the webserver answers and has loaded the code location without error."""
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            try:
                entries = graphql(self.url, LOCATION_STATUS, timeout=5)["workspaceOrError"]["locationEntries"]
                (entry,) = [e for e in entries if e["name"] == LOCATION]
                last = json.dumps(entry)
                if entry["loadStatus"] == "LOADED":
                    if entry["locationOrLoadError"]["__typename"] == "PythonError":
                        pytest.fail(f"the code location failed to load: {entry['locationOrLoadError']}")
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as error:
                last = repr(error)
            time.sleep(0.5)
        pytest.fail(
            f"the webserver at {self.url} did not load {LOCATION} in {timeout:.0f} s: {last}\n"
            f"{self.log('webserver')}"
        )

    def stop(self, *names: str, timeout: float = 30, grace: float = 20) -> dict[str, int]:
        """Stop the named processes (default: all): SIGINT to the daemon, SIGTERM to the webserver, wait,
        then SIGKILL their process group on timeout; whatever of a group is still alive `grace` seconds
        after its leader ended (code servers, run workers) is killed and its name put in `outlived`.
        Returns their exit codes."""
        processes = {
            name: self.processes.pop(name)
            for name in (names or list(self.processes))
            if name in self.processes
        }
        for name, process in processes.items():
            if process.poll() is None:
                process.send_signal(signal.SIGINT if name == "daemon" else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for name, process in processes.items():
            try:
                codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                codes[name] = process.wait(timeout=10)
        for name, process in processes.items():
            group_deadline = time.monotonic() + grace
            while group_alive(process.pid) and time.monotonic() < group_deadline:
                time.sleep(0.2)
            if group_alive(process.pid):
                self.outlived.append(name)
                _kill_group(process.pid)
        self.exit_codes.update(codes)
        return codes


def wait_for(what: str, condition, timeout: float, details=None, interval: float = 0.5):
    """Poll `condition` until it returns something true, and return that; fail the test after `timeout`
    seconds, with `details()` (e.g. the daemon's log) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"after {timeout:.0f} s still waiting for {what}" + (f"\n{details()}" if details else "")
            )
        time.sleep(interval)


def sensor_ticks(instance, name: str) -> list:
    """The ticks the daemon recorded of the sensor `name`, newest first ([] before its first)."""
    ticks = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == name:
            ticks += instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return sorted(ticks, key=lambda tick: tick.timestamp, reverse=True)


def quiet(instance, sensors: list[str], ticks: int = 2) -> bool:
    """Whether nothing runs and nothing is about to: no run in flight, no backfill going on, and each of
    `sensors` has completed `ticks` ticks since the last run ended, all of them requesting nothing. A
    failed tick fails the test."""
    if instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT), limit=1):
        return False
    if any(b.status in BACKFILL_GOING_ON for b in instance.get_backfills()):
        return False
    last_end = max((r.end_time or 0 for r in instance.get_run_records()), default=0)
    for name in sensors:
        since = [
            t
            for t in sensor_ticks(instance, name)
            if t.timestamp > last_end and t.status != TickStatus.STARTED
        ]
        for tick in since:
            if tick.status == TickStatus.FAILURE:
                pytest.fail(f"a tick of {name} failed: {tick.error}")
        if len(since) < ticks or any(t.status != TickStatus.SKIPPED for t in since):
            return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# Console messages that only say the machine has no internet: the UI asks for nothing outside the
# webserver, except what the checks below abort (requests to any other host).
def _environmental(message: str, location: str, base: str) -> bool:
    url = location or ""
    return (
        bool(url)
        and not url.startswith(base)
        and ("Failed to load resource" in message or "net::ERR" in message)
    )


class Browser:
    """A Chromium page on the UI that records page errors and console errors."""

    def __init__(self, page, base: str):

        self.page, self.base = page, base
        self.errors: list[str] = []
        self.ignored: list[str] = []
        self.blocked: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)
        self.first_run_skipped = False
        page.add_locator_handler(self.first_run_dialog(), self._skip)  # whenever it would block an action
        page.route(
            lambda url: not url.startswith(base) and urlparse(url).scheme in ("http", "https"), self._block
        )

    def _block(self, route):
        self.blocked.append(route.request.url)
        route.abort("blockedbyclient")

    def _console(self, message):
        if message.type != "error":
            return
        location = (message.location or {}).get("url", "")
        text = f"console error: {message.text} ({location})"
        (self.ignored if _environmental(message.text, location, self.base) else self.errors).append(text)

    def goto(self, path: str):
        self.page.goto(f"{self.base}{path}", wait_until="domcontentloaded")

    def first_run_dialog(self):
        return self.page.get_by_role("dialog").filter(has_text="Join the Dagster community")

    def dismiss_first_run(self, wait: float = 10) -> bool:
        """Skip the first-run "Join the Dagster community" dialog, which the UI opens a moment after the
        first page loads (once the instance has runs); True if it was shown (now or before)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        dialog = self.first_run_dialog()
        try:
            dialog.wait_for(state="visible", timeout=wait * 1000)
            self._skip(dialog)
        except PlaywrightTimeout:  # not shown, or the handler skipped it while waiting
            pass
        return self.first_run_skipped

    def _skip(self, dialog) -> None:
        if dialog.is_visible():
            dialog.get_by_role("button", name="Skip").click()
            dialog.wait_for(state="hidden")
            self.first_run_skipped = True

    def screenshot(self, path: Path, **options) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), **options)


@contextmanager
def chromium(base: str, viewport=(1440, 900), failure_screenshot: Path | None = None):
    """Debian's Chromium, headless, on a fresh profile; yields a `Browser` on `base`. If the block fails,
    the page as it was is saved to `failure_screenshot`."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests use Debian's Chromium "
            f"(`apt-get install -y chromium`; .ci/run installs it)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            context.set_default_timeout(30_000)
            browser = Browser(context.pages[0] if context.pages else context.new_page(), base)
            try:
                yield browser
            except BaseException:
                if failure_screenshot:
                    browser.page.screenshot(path=str(failure_screenshot))
                    print(f"the page when the test failed: {failure_screenshot}")
                raise
        finally:
            context.close()
