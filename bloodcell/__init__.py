"""Plain, tested functions behind the blood-cell ZenML pipeline, in subpackages that follow it:

- ``data``: reading sources, shards, the dataset type, stain, outliers, split, GX suites;
- ``augment``: rebalancing (RandAugment + AugMix) and online augmentation;
- ``model``: networks, training, packaging (calibration, the referral rule), prediction;
- ``evaluation``: test sets, corruptions, other labs, reliability, plots, promotion;
- ``mlops``: ZenML's model registry, lineage, run log, schedules, the GPU step operator;
- ``serving``: the served model, its HTTP app and deployment;
- ``cli``: the ``bloodcell`` command, on top of all of them.

Each imports only those above it in this list (``tests/test_layers.py``). The ZenML steps in
``steps/`` are thin wrappers around these functions; ``pipelines/`` composes the steps.
"""

CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
"""PBC's 8 classes; class index = position in this tuple (alphabetical folder order, as in
BloodMNIST)."""

MODEL_NAME = "bloodcell-classifier"
"""The model in ZenML's Model Control Plane that every training run makes a version of."""

MODEL_ARTIFACT = "shipped_model"
"""The training pipeline's shipped model (packaged by ``fine_tune``): the artifact a model version
is used through. Versions made before 0.2 hold it as ``tuned_model`` (``OLD_MODEL_ARTIFACTS``)."""

OLD_MODEL_ARTIFACTS: tuple[str, ...] = ("tuned_model",)
"""Earlier names of ``MODEL_ARTIFACT``, still read (``bloodcell.mlops.registry.model_artifact``)."""

MIN_UNLABELLED = 32
"""The fewest of a lab's unlabelled cells batch-norm statistics are recomputed from."""

__all__ = ["CLASS_NAMES", "MIN_UNLABELLED", "MODEL_ARTIFACT", "MODEL_NAME", "OLD_MODEL_ARTIFACTS"]


# Modules before the subpackages (version 0.1): artifacts written then name their types by these
# paths (``bloodcell.dataset.Dataset``), and ZenML imports them to load the artifact. Each old
# name imports as a thin module that forwards to the new one (``bloodcell.evaluation`` is a package
# now: its ``__init__`` forwards ``EvaluationReport``).
_OLD_NAMES = {
    "data": (
        "classes dataset decode dihedral images ingest npz outliers shards sharded_images split "
        "stain tables validation"
    ),
    "model": (
        "adaptation cnn compute efficientnet_lite history input_pipeline normalize packaging "
        "predict referral torch_weights training transfer weight_averaging"
    ),
    "evaluation": "corruptions noncells plots promotion reliability",
}
_MOVED = {old: f"{package}.{old}" for package, names in _OLD_NAMES.items() for old in names.split()}
_MOVED |= {
    "calibration": "model.batchnorm",
    "models": "model.build",
    "mlops.cli": "cli",
    "mlops.serve": "serving.deploy",
    "mlops.serve_app": "serving.app",
}


def _install_moved_finder() -> None:
    import importlib
    import importlib.abc
    import importlib.util
    import sys
    import types

    class _Forward(importlib.abc.Loader):
        def create_module(self, spec):
            return types.ModuleType(spec.name)

        def exec_module(self, module):
            target = importlib.import_module("bloodcell." + _MOVED[module.__name__[10:]])
            module.__getattr__ = lambda name: getattr(target, name)
            module.__doc__ = f"Moved: this is {target.__name__}."

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname.startswith("bloodcell.") and fullname[10:] in _MOVED:
                return importlib.util.spec_from_loader(fullname, _Forward())
            return None

    sys.meta_path.append(_Finder())


_install_moved_finder()
