"""The Celery executor (TAXI_EXECUTOR=celery): dagster-celery's, with checks at the start of a run and a
task time limit per queue (taxi_platform/executors.py's QUEUES); the workers run taxi_platform/worker.py.

Steps are acknowledged late and rejected when their worker is lost, so the step of a killed worker is
delivered again to another; the broker's consumer timeout must be longer than the longest time limit,
or a slow step is delivered twice (docs/scale-out.md). A run first checks that the broker answers
(failing at once, naming it with its password redacted) and waits at most `worker_wait_seconds` for a
worker on each queue its steps need. The pools still bound what runs at once: the run claims a step's
slot before it sends the step to its queue.
"""

import time

import dagster as dg
from celery.exceptions import OperationalError
from dagster._core.execution.retries import RetryMode
from dagster._core.storage.runs import SqliteRunStorage
from dagster._grpc.types import ExecuteStepArgs
from dagster._serdes import pack_value
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from taxi_platform.executors import QUEUE_TAG, QUEUES, SingleMachineStore
from taxi_platform.redaction import redact

# The soft limit (SoftTimeLimitExceeded, raised in the step: it fails there, its staged files removed)
# comes this much before the hard one (the step's process killed); limits under twice it are hard only.
SOFT_MARGIN_SECONDS = 60
# Late acknowledgement: a step's message is acknowledged once it ended, and given back to the broker
# when the worker running it is lost, so another worker takes it (at least once; the lake's, Postgres'
# and the warehouse's atomic month replacements make a second run of a step harmless).
CELERY_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,  # a busy worker holds no message that an idle one could take
    "broker_connection_retry_on_startup": True,
}


def celery_app(broker: str, backend: str):
    """The Celery app of the executor and of the workers alike (the same settings on both sides)."""
    return make_app(
        CeleryExecutor.for_cli(broker=broker, backend=backend, config_source=CELERY_SETTINGS).app_args()
    )


class BrokerUnreachable(Exception):
    """The broker did not answer when a run started."""


class NoWorker(Exception):
    """No worker consumed a queue the run needs within the wait."""


class TaxiCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor with the checks at the start of a run and a time limit per queue."""

    def __init__(self, retries, broker, backend, worker_wait_seconds: float, time_limits: dict):
        super().__init__(retries, broker=broker, backend=backend, config_source=CELERY_SETTINGS)
        self.worker_wait_seconds = worker_wait_seconds
        self.time_limits = time_limits

    def execute(self, plan_context, execution_plan):
        app = make_app(self.app_args())
        queues = {
            execution_plan.get_step_by_key(key).tags.get(QUEUE_TAG, app.conf.task_default_queue)
            for key in execution_plan.step_keys_to_execute
        }
        self.reach_broker(app)
        self.wait_for_workers(app, queues)
        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=self.submit)

    def reach_broker(self, app) -> None:
        """Fail at once, naming the broker (its password redacted), when it does not answer."""
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=2, interval_start=0.5, interval_step=0.5)
        except (OSError, OperationalError) as error:
            raise BrokerUnreachable(
                f"the Celery broker {redact(self.broker)} cannot be reached: {redact(str(error), self.broker)}"
            ) from None

    def wait_for_workers(self, app, queues: set[str]) -> None:
        """Until a worker consumes each of `queues`; fail after worker_wait_seconds naming those none does."""
        deadline = time.monotonic() + self.worker_wait_seconds
        while True:
            answers = app.control.inspect(timeout=1.0).active_queues() or {}
            served = {queue["name"] for consumed in answers.values() for queue in consumed}
            missing = sorted(queues - served)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise NoWorker(
                    f"no Celery worker consumes the queues {', '.join(missing)} of this run's steps after "
                    f"{self.worker_wait_seconds:.0f} s (broker {redact(self.broker)}): start one with "
                    f"`celery -A taxi_platform.worker worker -Q {','.join(missing)}`"
                )
            time.sleep(1)

    def submit(self, app, plan_context, step, queue, priority, known_state):
        """dagster-celery's submission of a step, with its queue's time limits."""
        args = ExecuteStepArgs(
            job_origin=plan_context.reconstructable_job.get_python_origin(),
            run_id=plan_context.dagster_run.run_id,
            step_keys_to_execute=[step.key],
            instance_ref=plan_context.instance.get_ref(),
            retry_mode=self.retries.for_inner_plan(),
            known_state=known_state,
            print_serialized_events=True,
        )
        limit = self.time_limits.get(queue, QUEUES["dagster"])
        return (
            create_task(app)
            .si(
                execute_step_args_packed=pack_value(args),
                executable_dict=plan_context.reconstructable_job.to_dict(),
            )
            .apply_async(
                priority=priority,
                queue=queue,
                routing_key=f"{queue}.execute_plan",
                time_limit=limit,
                soft_time_limit=limit - SOFT_MARGIN_SECONDS if limit > 2 * SOFT_MARGIN_SECONDS else None,
            )
        )


def refuse_single_machine_instance(instance: dg.DagsterInstance) -> None:
    """Celery workers record their steps in the run's Dagster instance: it must be a server."""
    if isinstance(instance.run_storage, SqliteRunStorage) or instance.is_ephemeral:
        where = getattr(instance.run_storage, "_conn_string", None) or "in memory"
        raise SingleMachineStore(
            f"TAXI_EXECUTOR=celery: the Dagster instance keeps its runs in SQLite ({where}), which "
            "workers on other machines cannot reach: use PostgreSQL storage (dagster-postgres, "
            "`storage: postgres:` in dagster.yaml, as docker/dagster.yaml does)"
        )


# What a run may set in its config (`execution: config:`); the broker and the backend are the deployment's.
RUN_CONFIG = {
    "worker_wait_seconds": dg.Field(
        dg.Noneable(float),
        default_value=None,
        description="How long a run waits for a worker on each queue it needs before it fails; default: "
        "the instance's run monitoring start timeout (run_monitoring: start_timeout_seconds).",
    ),
    "time_limits": dg.Field(
        dg.Permissive({queue: dg.Field(int, is_required=False) for queue in QUEUES}),
        default_value={},
        description="Task time limits in seconds by queue, over QUEUES's defaults.",
    ),
    "retries": CELERY_CONFIG["retries"],
}


@dg.executor(
    name="taxi_celery",
    config_schema={"broker": CELERY_CONFIG["broker"], "backend": CELERY_CONFIG["backend"], **RUN_CONFIG},
    requirements=dg.multiple_process_executor_requirements(),
)
def taxi_celery_executor(init_context) -> TaxiCeleryExecutor:
    """Steps on Celery workers (dagster-celery), one queue per kind of work (see the module)."""
    refuse_single_machine_instance(init_context.instance)
    config = init_context.executor_config
    return TaxiCeleryExecutor(
        retries=RetryMode.from_config(config["retries"]),
        broker=config["broker"],
        backend=config["backend"],
        worker_wait_seconds=(
            init_context.instance.run_monitoring_start_timeout_seconds
            if config["worker_wait_seconds"] is None
            else config["worker_wait_seconds"]
        ),
        time_limits=QUEUES | config["time_limits"],
    )


def celery_executor(broker, backend) -> dg.ExecutorDefinition:
    """The Celery executor on this broker and result backend: config sources, `{"env": NAME}` for a URL
    read when a run starts (so no URL, and no password, is written in a run's config)."""
    return taxi_celery_executor.configured(
        lambda config: {**config, "broker": broker, "backend": backend},
        config_schema=RUN_CONFIG,
        name="celery",
    )
