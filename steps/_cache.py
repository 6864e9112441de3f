"""The cache policy every cached step uses.

ZenML keys a step's cache on its own code, parameters and inputs. Two things are added here:
inputs are keyed by content (our materializers give content hashes), not by artifact id, so an
unchanged dataset re-read by ``ingest`` still hits the cache downstream; and the ``bloodcell``
modules a step calls, and the expectation suites, are part of its key, so changing them reruns
the step.
"""

from __future__ import annotations

from types import ModuleType

from zenml.config import CachePolicy


def content_cache_policy(*modules: ModuleType) -> CachePolicy:
    import bloodcell.dataset
    import bloodcell.tables
    import bloodcell.validation
    from steps._guard import SUITES

    return CachePolicy(
        include_artifact_ids=False,
        source_dependencies=[bloodcell.dataset, bloodcell.tables, bloodcell.validation, *modules],
        file_dependencies=[SUITES],
    )
