"""Serving a model: the loaded model with its limits, the HTTP app and the ZenML deployment. Imports
``bloodcell.data`` and ``bloodcell.model``, and ZenML."""
