"""Judging a model: plain, noisy and corrupted test sets, other labs, reliability, plots and the
promotion rule. Imports ``bloodcell.data``, ``bloodcell.augment`` and ``bloodcell.model``."""
