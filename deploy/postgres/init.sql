-- Run once, when the PostgreSQL volume is created: the MLflow tracking server's database beside
-- the service database (POSTGRES_DB). They stay apart: both keep an `alembic_version` table.
CREATE DATABASE mlflow;
