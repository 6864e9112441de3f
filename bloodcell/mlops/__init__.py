"""ZenML integration and operations, on top of the pipelines: the ``bloodcell`` CLI, the model
registry (versions, export), lineage, the scheduler and the local GPU step operator flavor."""
