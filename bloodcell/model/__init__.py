"""Networks, their training, packaging (calibration, the referral rule) and prediction. Imports
``bloodcell.data`` and ``bloodcell.augment`` only."""
