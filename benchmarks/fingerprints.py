"""The content hash of every artifact a pipeline run makes: proof that a refactor changed nothing.

    .venv/bin/python benchmarks/fingerprints.py --json before.json   # on the old code
    .venv/bin/python benchmarks/fingerprints.py --json after.json    # on the new code
    .venv/bin/python benchmarks/fingerprints.py --compare before.json after.json

Runs the config (default: the quickstart) once in a throw-away copy of the project with a fresh
ZenML store (or reads the last training run of an existing store: `--store ZENML_CONFIG_PATH`),
and prints `step.output: fingerprint` for each artifact, from its loaded content:
- datasets: their fingerprint (shard digests);
- models: their weights only (a model's JSON names the modules of its layers, which a move of
  the code changes);
- training histories: the per-epoch metrics (not the wall time);
- evaluation reports: every figure of their summary;
- expectation reports: the set of checks, each with its table, expectation, arguments and
  outcome (not its wording or order);
- anything else: ZenML's content hash.
Split and augmented sets are the same on any machine; trained weights are the same on the same
machine (floating-point order differs between CPUs). Output names renamed by a refactor are
matched by fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sandbox import make_sandbox, zenml  # noqa: E402


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def content_fingerprint(artifact) -> str:
    """A fingerprint of what the artifact holds, read by loading it."""
    data = artifact.load()
    kind = type(data).__name__
    if hasattr(data, "get_weights"):  # a Keras model
        h = hashlib.sha256()
        for w in data.get_weights():
            h.update(str(w.shape).encode() + w.tobytes())
        return h.hexdigest()
    if kind == "Dataset":
        return data.fingerprint
    if kind == "TrainingHistory":
        return _digest(data.history)
    if kind == "EvaluationReport":
        return _digest(data.summary())
    if kind == "ValidationReport":
        checks = [(r.table, r.expectation, r.kwargs, r.success) for r in data.results]
        return _digest(sorted(checks, key=lambda c: json.dumps(c, sort_keys=True, default=str)))
    return artifact.content_hash or ""


def last_run_fingerprints() -> dict[str, str]:
    from zenml.client import Client

    run = Client().get_pipeline("training_pipeline").last_run
    return {
        f"{step_name}.{name}": content_fingerprint(versions[0])
        for step_name, step in sorted(run.steps.items())
        for name, versions in sorted(step.outputs.items())
    }


def fingerprints(config: str, store: str | None = None) -> dict[str, str]:
    os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
    if store:
        os.environ["ZENML_CONFIG_PATH"] = store
        return last_run_fingerprints()
    os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="bloodcell-fp-zenml-")
    proj = make_sandbox(Path(tempfile.mkdtemp(prefix="bloodcell-fp-")) / "proj")
    zenml(proj, "pipeline", "run", "pipelines.training.training_pipeline", "-c", config)
    return last_run_fingerprints()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--json", help="also write the fingerprints to this file")
    ap.add_argument("--store", help="read the last training run of this ZENML_CONFIG_PATH")
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="compare two saved files, run nothing",
    )
    args = ap.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        # an output renamed by the refactor is matched by its hash
        moved = {k: v for k, v in after.items() if k not in before}
        same = 0
        for key, value in before.items():
            match = after.get(key, value if value in moved.values() else None)
            print(f"{'same   ' if match == value else 'CHANGED'} {key}")
            same += match == value
        print(f"{same} of {len(before)} artifacts identical")
        raise SystemExit(0 if same == len(before) else 1)
    result = fingerprints(args.config, args.store)
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
