-- Run once, when the PostgreSQL volume is created: the MLflow tracking server's databases beside
-- the service database (POSTGRES_DB). They stay apart: both keep an `alembic_version` table.
CREATE DATABASE mlflow;
-- The MLflow server's users and permissions (its basic-auth app), apart from its runs.
CREATE DATABASE mlflow_auth;
