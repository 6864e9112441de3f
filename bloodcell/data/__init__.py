"""Images in, datasets out: reading sources, shards, the dataset type, stain, outliers, split and
the GX suites. Imports nothing else from ``bloodcell``."""
