"""A Celery deployment for the tests: a vhost of its own on the machine's RabbitMQ, a Dagster instance on
PostgreSQL (docker/dagster-celery.yaml, with Cloud Storage compute logs in the emulator), and real
workers (`celery -A taxi_platform.worker worker`) as subprocesses, each in a folder of its own (its
working directory and TMPDIR), reaching PostgreSQL, the broker and the emulators only over TCP.

The broker is the machine's (RabbitMQ at 127.0.0.1:5672; .ci/run starts it when it is down): a broker
that does not answer fails these tests, it does not skip them.
"""

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import yaml

from taxi_platform.celery_executor import celery_app
from taxi_platform.executors import QUEUES
from taxi_platform_tests.ui import BIN, PROJECT, group_alive, wait_for

RABBITMQ = ("127.0.0.1", 5672)
# The BigQuery emulator reads multipart uploads only with this content type (taxi_platform_tests/
# bigquery.py patches the client in the test process): each worker's interpreter gets the same patch.
EMULATOR_PATCH = (
    "import google.cloud.bigquery.client as c\nc._GENERIC_CONTENT_TYPE = 'application/octet-stream'\n"
)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


class Vhost:
    """A RabbitMQ virtual host of a test's own: its queues meet no other test's workers."""

    def __init__(self):
        with socket.create_connection(RABBITMQ, timeout=5):
            pass  # the broker answers (a refused connection fails the test, naming it)
        self.name = f"taxi-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/{self.name}"

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


def write_celery_instance(home: Path) -> None:
    """docker/dagster-celery.yaml as the tests run it: the daemon launches runs as local subprocesses
    (no Docker engine here) and dequeues them every second."""
    config = yaml.safe_load((PROJECT / "docker" / "dagster-celery.yaml").read_text())
    config.pop("run_launcher")
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "taxi_platform.definitions",
                            "location_name": "taxi_platform",
                            "working_directory": str(PROJECT),
                        }
                    }
                ]
            }
        )
    )


class Workers:
    """Celery workers, each `<name>@<host>` with one process taking one step at a time."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.app = celery_app(env["TAXI_CELERY_BROKER"], "rpc://")
        (root / "site").mkdir(parents=True, exist_ok=True)
        (root / "site" / "sitecustomize.py").write_text(EMULATOR_PATCH)

    def start(self, name: str, *queues: str) -> str:
        folder = self.root / name
        (folder / "tmp").mkdir(parents=True)
        log = open(folder / "worker.log", "wb")  # noqa: SIM115 (kept open by the process)
        node = f"{name}@{socket.gethostname()}"
        self.processes[node] = subprocess.Popen(
            [BIN / "celery", "-A", "taxi_platform.worker", "worker", "-n", node, "--concurrency", "1"]
            + ["-Q", ",".join(queues or QUEUES), "--without-gossip", "--without-mingle", "-l", "INFO"],
            cwd=folder,
            env={**self.env, "TMPDIR": str(folder / "tmp"), "PYTHONPATH": str(self.root / "site")},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return node

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every started worker answers on the broker."""

        def ready():
            for node, process in self.processes.items():
                assert process.poll() is None, f"{node} exited:\n{self.log(node)}"
            answered = {node for reply in self.app.control.ping(timeout=1.0) for node in reply}
            return set(self.processes) <= answered

        wait_for("the workers to answer", ready, timeout=timeout, details=self.logs)

    def kill(self, node: str) -> None:
        """SIGKILL the worker and its pool processes: its machine is gone."""
        os.killpg(self.processes[node].pid, signal.SIGKILL)
        self.processes[node].wait(timeout=30)

    def log(self, node: str) -> str:
        path = self.root / node.split("@")[0] / "worker.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {node}\n{self.log(node)}" for node in self.processes)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            if group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
