"""Augmentation: ``rebalance`` (materialised once, RandAugment + AugMix, by the ``rebalance``
step) and ``online`` (drawn afresh for every training batch inside the tf.data pipeline)."""
