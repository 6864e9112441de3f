"""ZenML steps: thin wrappers that wire typed artifacts to the plain functions in ``bloodcell``."""
