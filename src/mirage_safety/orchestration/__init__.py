"""What the Prefect flows (``flows/``) build on, free of Prefect itself: the workspace lock,
failure classification, parameters as DVC experiments, and the run report."""
