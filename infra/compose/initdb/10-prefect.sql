-- The Prefect server's database, next to MLflow's (POSTGRES_DB=mlflow); runs once, on
-- the first start with an empty data volume.
CREATE DATABASE prefect OWNER mirage;
