"""Where a run's steps execute, a deployment choice (TAXI_EXECUTOR, read in profiles.py): in the run's
process (`in_process`, the default), a process per step (`multiprocess`), or on Celery workers through a
broker (`celery`: taxi_platform/celery_executor.py, with the `celery` extra), each worker on any machine
that reaches the broker, PostgreSQL and the cloud stores.

On Celery each kind of work has its queue, named by the steps' `dagster-celery/queue` tag (`queue_tags`),
with a task time limit (`QUEUES`): a worker on a machine sized for a kind of work consumes its queue.
"""

EXECUTORS = ("in_process", "multiprocess", "celery")
# dagster-celery's op tag naming a step's queue (dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG; the other
# executors ignore it, and the code location loads without the celery extra).
QUEUE_TAG = "dagster-celery/queue"
# Queue of each kind of work -> its task time limit in seconds (hard; the soft limit, which fails the
# step where it is, a minute earlier). The broker's consumer timeout must exceed the longest.
QUEUES = {
    "ingest": 3_600,  # downloads, parsing, cleaning, the lake's publish; the zones
    "postgres": 3_600,  # the PostgreSQL loads
    "warehouse": 5_400,  # the warehouse loads and dbt (a backfill runs up to 12 months of models)
    "dagster": 3_600,  # steps without a queue of their own: rollback, vacuum, lake conversion
}


class SingleMachineStore(Exception):
    """A store that only processes on one machine reach, where steps run on several."""


def queue_tags(queue: str) -> dict[str, str]:
    """The op tags that send a step to `queue` (one of QUEUES) on Celery; ignored by other executors."""
    assert queue in QUEUES, queue
    return {QUEUE_TAG: queue}
