"""PostgreSQL: the IO manager (io_manager.py), its connection and embedded server (connection.py), its
tables' DDL and drift (ddl.py), the partition swap (partition_swap.py), COPY in and out
(binary_copy.py). README: IO managers."""

from taxi_platform.io_managers.postgres.ddl import pg_type
from taxi_platform.io_managers.postgres.io_manager import (
    TABLE,
    UNIQUE_KEY,
    PostgresIOManager,
    PostgresWriteError,
)

__all__ = ["TABLE", "UNIQUE_KEY", "PostgresIOManager", "PostgresWriteError", "pg_type"]
