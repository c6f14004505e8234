-- The taxi database, beside Dagster's own (created by POSTGRES_DB).
CREATE DATABASE taxi OWNER dagster;
