"""Prefect flows that orchestrate the DVC pipeline (``retrain``) and its deployments."""
