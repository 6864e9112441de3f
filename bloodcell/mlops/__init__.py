"""ZenML integration: the model registry (versions, export), lineage, the run log, the
scheduler, lab adaptation runs and the local GPU step operator flavor. Imports ``data``,
``model`` and ``evaluation``."""
