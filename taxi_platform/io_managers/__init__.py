"""IO managers: the lake, PostgreSQL and the warehouse; generic, no taxi knowledge.

A partitioned asset names its DATE column in definition metadata `PARTITION_COLUMN`: each IO
manager stores a partition's rows by that column's values inside the partition's time window.
"""

PARTITION_COLUMN = "partition_column"
