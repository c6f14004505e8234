"""A step's publish refused once its run has ended: on Celery the steps of a terminated run go on in
their workers (dagster-celery revokes their tasks without terminating them). The lake's publish and
every sink's audited write ask it."""

import dagster as dg

# The statuses of a run whose steps may still publish.
RUNNING = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)


def refuse_if_run_ended(context: dg.OutputContext) -> None:
    """Refuse to publish an output of a run that no longer runs (terminated, or failed meanwhile). A
    context built outside a run (a unit test's) has no run to ask."""
    try:
        instance = context.step_context.instance
    except dg.DagsterInvariantViolationError:
        return
    run = instance.get_run_by_id(context.run_id)
    if run is not None and run.status not in RUNNING:
        keys = list(context.asset_partition_keys) if context.has_asset_partitions else []
        raise dg.Failure(
            description=f"{context.asset_key.to_user_string()} {', '.join(keys)} not published: run "
            f"{context.run_id} is {run.status.value}",
            allow_retries=False,  # the run is over: no retry of the step can publish
        )
