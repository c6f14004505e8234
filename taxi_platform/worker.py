"""The Celery app that the workers of TAXI_EXECUTOR=celery run, with the executor's settings
(taxi_platform/celery_executor.py); the broker and backend are read from the environment when it starts:

    celery -A taxi_platform.worker worker -Q ingest,postgres,warehouse,dagster -n one@%h --concurrency 1

`-Q` picks the kinds of work this machine takes (executors.QUEUES); `-n` names the worker in the step
events. Each step runs in a child process of the worker, which loads the code location there.
"""

from dagster_celery.tasks import create_task

from taxi_platform.celery_executor import celery_app
from taxi_platform.profiles import celery_urls

app = celery_app(*celery_urls())
execute_plan = create_task(app)
