"""The data the IO managers take and give: a pyarrow Table, a lazy pyarrow Dataset, a stream
(RecordBatchReader), or a dict of partition key -> one of them; read in batches of a bounded size."""

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import cast

import pyarrow as pa
import pyarrow.dataset as ds

BATCH_ROWS = 131_072


def use_jemalloc() -> None:
    """Make jemalloc pyarrow's memory pool: it hands the memory of freed batches back to the system,
    where pyarrow's default (mimalloc) kept it and a run's RSS climbed step by step
    (benchmarks/README.md). A pyarrow built without jemalloc keeps its default."""
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def stream(data: pa.Table | ds.Dataset | dict | pa.RecordBatchReader) -> pa.RecordBatchReader:
    """The data's rows as a stream of batches of at most BATCH_ROWS rows (a stream is passed on)."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        # pyarrow ships no type stubs: pyright cannot narrow `data` by this isinstance.
        table = cast(pa.Table, data)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(BATCH_ROWS))
    # Read ahead little: a scan's default of 16 batches would hold two million rows.
    scanner = as_dataset(data).scanner(batch_size=BATCH_ROWS, batch_readahead=2, fragment_readahead=1)
    return scanner.to_reader()


def as_dataset(data: pa.Table | ds.Dataset | dict) -> ds.Dataset:
    """A Table, a Dataset, or a dict of them (a run's partitions) as one Dataset, read lazily.

    Not a stream: it can be read only once, and a Dataset may be scanned again."""
    if isinstance(data, dict):
        return ds.dataset([as_dataset(part) for part in data.values()])
    if isinstance(data, pa.RecordBatchReader):
        raise TypeError("a stream of batches cannot be scanned twice; pass a Table or a Dataset")
    return data if isinstance(data, ds.Dataset) else ds.dataset(data)


def prefetched(rows: pa.RecordBatchReader, depth: int = 2) -> Iterator[pa.RecordBatch]:
    """The stream's batches, produced in a thread up to `depth` ahead of their consumer: parsing or
    cleaning the next batch overlaps with writing this one (both release the GIL in pyarrow)."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def offer(item) -> bool:
        """Hand over an item, unless the consumer has stopped."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for batch in rows:
                if not offer(batch):
                    return
            offer(done)
        except BaseException as error:  # re-raised in the consumer
            offer(error)

    producer = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    producer.start()
    try:
        while (item := handoff.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()
