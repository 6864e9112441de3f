"""Quickstart timing: first run and cached rerun of the quickstart pipeline, with peak RSS.

    .venv/bin/python benchmarks/pipeline_timing.py [--config configs/quickstart.yaml]

Runs in a throw-away copy of the project with a fresh ZenML store (so the first run is a real
one), as `zenml pipeline run ...` twice, and prints wall time and peak RSS of each, next to the
time it takes just to import TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.sandbox import ZENML, make_sandbox  # noqa: E402

MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": rc.returncode, "wall_s": wall, "peak_rss_mb": rss, "err": rc.stderr[-3000:]}))
"""


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result['err']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bloodcell-bench-") as tmp:
        env = {**os.environ, "ZENML_CONFIG_PATH": str(Path(tmp) / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        os.environ.update(env)
        proj = make_sandbox(Path(tmp) / "proj")
        env["PYTHONPATH"] = str(proj)
        tf_import = measure([sys.executable, "-c", "import tensorflow, keras"], proj, env)
        cmd = [ZENML, "pipeline", "run", "pipelines.training.training_pipeline", "-c", args.config]
        first = measure(cmd, proj, env)
        cached = measure(cmd, proj, env)
    print(f"config: {args.config}")
    print(f"import tensorflow+keras : {tf_import['wall_s']:7.1f} s")
    print(f"first run               : {first['wall_s']:7.1f} s   peak RSS {first['peak_rss_mb']:7.0f} MB")
    print(f"cached rerun            : {cached['wall_s']:7.1f} s   peak RSS {cached['peak_rss_mb']:7.0f} MB")
    print(f"cached rerun beyond TF import: {cached['wall_s'] - tf_import['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
