"""The content hash of every artifact a pipeline run makes: proof that a refactor changed nothing.

    .venv/bin/python benchmarks/fingerprints.py --json before.json   # on the old code
    .venv/bin/python benchmarks/fingerprints.py --json after.json    # on the new code
    .venv/bin/python benchmarks/fingerprints.py --compare before.json after.json

Runs the config (default: the quickstart) once in a throw-away copy of the project with a fresh
ZenML store, and prints `step.output: content hash` for each artifact (datasets: their shard
digests; models: their weights). Split and augmented sets are the same on any machine; trained
weights are the same on the same machine (floating-point order differs between CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sandbox import make_sandbox, zenml  # noqa: E402


def fingerprints(config: str) -> dict[str, str]:
    os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="bloodcell-fp-zenml-")
    os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
    proj = make_sandbox(Path(tempfile.mkdtemp(prefix="bloodcell-fp-")) / "proj")
    zenml(proj, "pipeline", "run", "pipelines.training.training_pipeline", "-c", config)
    from zenml.client import Client

    run = Client().get_pipeline("training_pipeline").last_run
    out = {}
    for step_name, step in sorted(run.steps.items()):
        for name, versions in sorted(step.outputs.items()):
            out[f"{step_name}.{name}"] = versions[0].content_hash or ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--json", help="also write the hashes to this file")
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
    result = fingerprints(args.config)
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
