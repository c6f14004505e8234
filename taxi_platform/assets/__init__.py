"""Asset factories, one module per layer; each builds a dataset's assets from its spec."""

from contextlib import contextmanager

import dagster as dg

from taxi_platform.reading import UnreadableFile
from taxi_platform.source import SourceError, SourceUnavailable


def by_month(context: dg.AssetExecutionContext, value) -> dict:
    """An input loaded for the run's partitions, as {month: table}, for one month or a range."""
    return value if isinstance(value, dict) else {context.partition_key: value}


@contextmanager
def permanent_errors_not_retried():
    """Fail the step without the retry policy when retrying cannot help: a month not published, an
    HTML page or a file that cannot be read as declared. A source still unavailable after the
    download's own tries is left to the step's retry policy."""
    try:
        yield
    except SourceUnavailable:
        raise
    except (SourceError, UnreadableFile) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
