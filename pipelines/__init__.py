"""ZenML pipelines."""
