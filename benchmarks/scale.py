"""Scale benchmark (issue 22): the training pipeline on N synthetic cells, with wall time, images/s
and peak RSS per step; with ``--fan-out`` (issue 32), the data steps single and fanned out.

    .venv/bin/python benchmarks/scale.py --images 200000 --json scale-200k.json
    .venv/bin/python benchmarks/scale.py --images 200000 --fan-out --new 0.01 --json fan-out.json

``--fan-out`` runs the data pipeline (``pipelines.data``: ingest and the outlier filter) on the
cells in one fresh store four times: single, fanned out (``--chunk-size``, ``--parallelism``
chunk steps at once), fanned out again unchanged (every chunk a cache hit), and, with ``--new
SHARE``, after SHARE more cells a class were added, numbered after the old ones and dated a week
later. For each: the data steps' wall time (first start to last end) and peak RSS, the dataset
fingerprints (``fingerprint_single``, ``fingerprint_fanout``), the mapped steps (ran, cached,
their phase's wall and peak RSS), ``first_data_steps_s`` and ``rerun_data_steps_s``.

The N cells are made from pbc96, balanced over its 8 classes: each is a random crop (70-100% of the
side) of a random pbc96 image of its class, resized back to 96 px, turned by one of the 8
rotations/reflections, with a mild colour gain and offset and a little noise, saved as JPEG
(quality 92). They are distinct (the near-duplicate filter keeps them) and look like PBC to the
stain check. They are made once, in ``--cache`` (default ``~/.cache/bloodcell/scale``), and reused.

The pipeline is the real one (``zenml pipeline run pipelines.training.training_pipeline``) in a
throw-away copy of the project with a fresh ZenML store, so nothing is a cache hit. Its config
bounds what does not grow with the data, so that the data path is what is measured: the
quickstart's narrower CNN, ``--epochs`` epochs of ``--steps`` batches of 64, no weight averaging,
no test-time augmentation, and val and test splits of 10% each up to ``--held-out`` images
(10,000, as a lab with a million cells would hold out). Everything else (ingest, outlier filter,
split, rebalance, validation each epoch, packaging, evaluation with the noise and corruption sets,
promotion) runs on all N as a user's run would.

Per step: wall time from ZenML's step start and end, the images it handled, and the peak resident
memory of the run's process tree while it ran (sampled every 0.1 s with psutil). The images a step
handles: ingest, filter_outliers and split all N (after filtering for split); rebalance the
training split; train the batches it trained (epochs x steps x 64); fine_tune (packaging, with the
prior correction scored on it) and train's validation the val split; evaluate and promote the test
split.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.sandbox import ZENML, make_sandbox  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "pbc96"
SIZE = 96
BATCH = 64
GAIN, OFFSET = (
    0.05,
    5.0,
)  # the synthetic cells' colour jitter: per-channel gain 1 +- GAIN, offset +- OFFSET
RECIPE_VERSION = 2  # bump when the synthesis changes: a cache made by another version is remade
_SOURCES: dict[str, np.ndarray] = {}


def _class_images(folder: Path) -> np.ndarray:
    from PIL import Image

    if folder.name not in _SOURCES:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        _SOURCES[folder.name] = np.stack(
            [np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE))) for f in files]
        )
    return _SOURCES[folder.name]


def _synthesize(task: tuple[str, str, int, int, int]) -> int:
    """Write cells ``start`` .. ``start + count - 1`` of one class; each from its own seed."""
    from PIL import Image

    source, out, class_index, start, count = task
    src = _class_images(Path(source))
    # noise from a bank of 64 fields (drawing 27k normals an image would cost more than the rest)
    bank = (
        np.random.default_rng([RECIPE_VERSION, class_index, start, 1])
        .normal(0, 2.0, (64, SIZE, SIZE, 3))
        .astype(np.float32)
    )
    for k in range(start, start + count):
        rng = np.random.default_rng([RECIPE_VERSION, class_index, k])
        img = src[rng.integers(len(src))]
        side = int(SIZE * rng.uniform(0.7, 1.0))
        x, y = rng.integers(0, SIZE - side + 1, size=2)
        cell = np.asarray(
            Image.fromarray(img).resize(
                (SIZE, SIZE), Image.BILINEAR, box=(x, y, x + side, y + side)
            )
        )
        cell = np.rot90(cell, int(rng.integers(4)))
        if rng.integers(2):
            cell = cell[:, ::-1]
        gain = rng.uniform(1 - GAIN, 1 + GAIN, size=3).astype(np.float32)
        cell = cell.astype(np.float32) * gain + np.float32(rng.uniform(-OFFSET, OFFSET))
        cell += bank[rng.integers(len(bank))]
        Image.fromarray(np.clip(cell, 0, 255).astype(np.uint8)).save(
            Path(out) / f"{k:07d}.jpg", quality=92
        )
    return count


def synthesize(n: int, cache: Path, source: Path = SOURCE, workers: int | None = None) -> Path:
    """``cache/n{n}``: n synthetic cells in class folders, made unless already complete there."""
    folder = cache / f"n{n}"
    marker = folder / "COMPLETE.json"
    recipe = {"images": n, "source": str(source), "version": RECIPE_VERSION}
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        print(f"synthetic cells: {n} reused from {folder}", flush=True)
        return folder
    if not source.is_dir():
        raise SystemExit(
            f"{source} is missing: the synthetic cells are made from pbc96 (../shared/data/pbc96)"
        )
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    tasks = []
    for c, name in enumerate(classes):
        per_class = n // len(classes) + (c < n % len(classes))
        (folder / name).mkdir(parents=True, exist_ok=True)
        for start in range(0, per_class, 2000):
            tasks.append(
                (str(source / name), str(folder / name), c, start, min(2000, per_class - start))
            )
    t0, done = time.perf_counter(), 0
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        for count in pool.map(_synthesize, tasks):
            done += count
            if done % 50000 < count or done == n:
                print(
                    f"synthetic cells: {done}/{n} ({done / (time.perf_counter() - t0):.0f} img/s)",
                    flush=True,
                )
    marker.write_text(json.dumps(recipe))
    return folder


def stain_ranges() -> dict[str, list[float]]:
    """PBC's stain ranges widened by the synthesis's colour jitter: the ingest check's ranges for
    these cells (a lab sets its own the same way, from ``bloodcell profile``)."""
    from bloodcell.data.stain import PBC_STAIN_RANGES

    return {
        c: [max(0.0, lo * (1 - GAIN) - OFFSET), min(255.0, hi * (1 + GAIN) + OFFSET)]
        for c, (lo, hi) in PBC_STAIN_RANGES.items()
    }


def pipeline_config(images: Path, n: int, epochs: int, steps: int, held_out: int) -> dict:
    fraction = min(0.1, held_out / n)  # val and test: 10% each, at most ``held_out`` images
    return {
        "steps": {
            "ingest": {"parameters": {"source": str(images), "stain_ranges": stain_ranges()}},
            "split": {"parameters": {"val_fraction": fraction, "test_fraction": fraction}},
            "train": {
                "parameters": {
                    "network": {"filters": [16, 32, 64, 128], "dense_units": 128},
                    "training": {
                        "epochs": epochs,
                        "steps_per_epoch": steps,
                        "batch_size": BATCH,
                        "swa_epochs": 0,
                    },
                }
            },
            "fine_tune": {"parameters": {"tta": False}},
        }
    }


class RssSampler(threading.Thread):
    """The resident memory of a process and its children, every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.interval, self.samples = psutil.Process(pid), interval, []
        self.stopped = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stopped.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = 0
                for p in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += p.memory_info().rss
                self.samples.append((time.time(), rss))
            except psutil.NoSuchProcess:
                return
            time.sleep(self.interval)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        within = [rss for t, rss in self.samples if start <= t <= end]
        return max(within, default=0) / 2**20


def _epoch(dt) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def step_images(run, epochs: int, steps: int) -> dict[str, int]:
    """How many images each finished step handled, from the steps' run metadata (see the module's
    doc)."""
    meta = {name: s.run_metadata for name, s in run.steps.items()}
    out: dict[str, int] = {}
    if "samples" in meta.get("ingest", {}):
        out["ingest"] = out["filter_outliers"] = int(meta["ingest"]["samples"])
    if "train" in meta.get("split", {}):
        sizes = {k: int(meta["split"][k]) for k in ("train", "val", "test")}
        out.update(
            split=sum(sizes.values()),
            rebalance=sizes["train"],
            fine_tune=sizes["val"],
            evaluate=sizes["test"],
            promote=sizes["test"],
        )
    if "after" in meta.get("rebalance", {}):
        out["train"] = (
            epochs * min(steps, -(-int(sum(meta["rebalance"]["after"].values())) // BATCH)) * BATCH
        )
    return out


def prepare(workdir: Path) -> tuple[Path, dict[str, str]]:
    """A throw-away copy of the project with its own ZenML store under ``workdir``."""
    env = {
        **os.environ,
        "ZENML_CONFIG_PATH": str(workdir / "zenml"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    os.environ.update(env)
    proj = make_sandbox(workdir / "proj")
    env["PYTHONPATH"] = str(proj)
    return proj, env


def run_pipeline(
    proj: Path, env: dict[str, str], pipeline: str, config: dict, name: str
) -> tuple[dict, object, RssSampler]:
    """Run ``pipeline`` with ``config`` in ``proj``: its wall time, peak RSS and whether it failed,
    the ZenML run, and the memory samples."""
    path = proj / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = proj.parent / f"{name}.log"
    print(f"{name}: running {pipeline} (log: {log})", flush=True)
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [ZENML, "pipeline", "run", pipeline, "-c", str(path)],
            cwd=proj,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        sampler = RssSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        sampler.stopped.set()
        sampler.join()
    wall = time.time() - t0

    from zenml.client import Client

    run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]
    result = {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(max(usage.ru_maxrss / 1024, sampler.peak())),
        "run": str(run.id),
        "failed": os.waitstatus_to_exitcode(status) != 0,
        "log": str(log),
    }
    return result, run, sampler


def step_times(run, t0: float, wall: float) -> dict[str, tuple[float, float]]:
    """Each finished step's start and end (epoch seconds), checked against the run's own span."""
    out = {}
    for name, s in run.steps.items():
        if s.end_time is None or str(s.status) not in ("completed", "cached"):
            continue
        start, end = _epoch(s.start_time), _epoch(s.end_time)
        if not t0 - 1 <= start <= end <= t0 + wall + 1:  # ZenML's times are naive UTC
            raise SystemExit(
                f"step {name}'s times {s.start_time}..{s.end_time} fall outside the run"
            )
        out[name] = (start, end)
    return out


def training_run(images: Path, n: int, workdir: Path, epochs: int, steps: int, held_out: int):
    proj, env = prepare(workdir)
    config = pipeline_config(images, n, epochs, steps, held_out)
    t0 = time.time()
    result, run, sampler = run_pipeline(
        proj, env, "pipelines.training.training_pipeline", config, "scale"
    )
    counts = step_images(run, epochs, steps)
    times = step_times(run, t0, result["wall_s"])
    steps_out = {}
    for name, s in sorted(
        run.steps.items(), key=lambda kv: (kv[1].start_time is None, kv[1].start_time or 0)
    ):
        if name not in times:
            steps_out[name] = {"status": str(s.status)}
            continue
        start, end = times[name]
        handled = counts.get(name, 0)
        steps_out[name] = {
            "wall_s": round(end - start, 1),
            "images": handled,
            "images_per_s": round(handled / max(end - start, 1e-9)) if handled else None,
            "peak_rss_mb": round(sampler.peak(start, end)),
        }
    return {**result, "steps": steps_out}


MAPPED = ("ingest_chunk_", "score_chunk_")


def data_run(proj: Path, env: dict[str, str], images: Path, chunk_size: int | None, name: str):
    """The data pipeline (ingest and the outlier filter) once, single or fanned out: the data
    steps' wall time and peak RSS, the dataset fingerprints, and the mapped steps' figures."""
    config = {
        "steps": {"ingest": {"parameters": {"source": str(images), "stain_ranges": stain_ranges()}}}
    }
    if chunk_size:
        config["parameters"] = {"fan_out": {"chunk_size": chunk_size}}
    t0 = time.time()
    result, run, sampler = run_pipeline(proj, env, "pipelines.data.data_pipeline", config, name)
    if result["failed"]:
        raise SystemExit(f"{name}: the pipeline failed, its log is {result['log']}")
    times = step_times(run, t0, result["wall_s"])
    begin = min(start for start, _ in times.values())
    finish = max(end for _, end in times.values())
    gathered = "gather_chunks" if chunk_size else "ingest"
    out = {
        **result,
        "data_steps_s": round(finish - begin, 1),
        "data_steps_peak_rss_mb": round(sampler.peak(begin, finish)),
        "fingerprint": run.steps[gathered].outputs["dataset"][0].run_metadata["fingerprint"],
        "filtered_fingerprint": run.steps["filter_outliers"]
        .outputs["filtered_dataset"][0]
        .run_metadata["fingerprint"],
        "steps": {
            n: {
                "status": str(run.steps[n].status),
                "wall_s": round(e - s, 1),
                "peak_rss_mb": round(sampler.peak(s, e)),
            }
            for n, (s, e) in sorted(times.items(), key=lambda kv: kv[1])
            if not n.startswith(MAPPED)
        },
    }
    mapped = {n: times[n] for n in times if n.startswith(MAPPED)}
    if mapped:
        walls = [e - s for s, e in mapped.values()]
        ran = [n for n in mapped if str(run.steps[n].status) == "completed"]
        out["mapped"] = {
            "steps": len(mapped),
            "ran": len(ran),
            "cached": len(mapped) - len(ran),
            "mean_wall_s": round(float(np.mean(walls)), 2),
            "max_wall_s": round(float(np.max(walls)), 1),
            # from the plan to the gather: the whole fanned-out phase, per mapped step
            "phase_s": round(times["gather_chunks"][0] - times["plan_chunks"][1], 1),
            "phase_peak_rss_mb": round(
                sampler.peak(times["plan_chunks"][1], times["gather_chunks"][0])
            ),
        }
    return out


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def grow(source: Path, share: float) -> int:
    """Add ``share`` more cells to each class of ``source`` (hard links of the cached cells),
    numbered after the old ones as a scanner numbers new images, and dated a week after the newest
    old one, as a weekly export is. The cache keeps only the cells it made."""
    week_later = max(p.stat().st_mtime for p in source.rglob("*.jpg")) + 7 * 24 * 3600
    added = 0
    for c, folder in enumerate(sorted(p for p in source.iterdir() if p.is_dir())):
        have = sum(1 for _ in folder.iterdir())
        more = max(1, round(share * have))
        _synthesize((str(SOURCE / folder.name), str(folder), c, have, more))
        for k in range(have, have + more):
            os.utime(folder / f"{k:07d}.jpg", (week_later, week_later))
        added += more
    return added


def fan_out_runs(args, images: Path, workdir: Path) -> dict:
    """Single, fanned out, fanned out again unchanged and, with ``--new``, after the source grew:
    all in one store, so the later runs see the earlier ones' cache as a user's would."""
    source = workdir / "source"
    shutil.copytree(images, source, copy_function=_link)
    proj, env = prepare(workdir)
    env["ZENML_DYNAMIC_PIPELINE_WORKER_COUNT"] = str(args.parallelism)
    single = data_run(proj, env, source, None, "single")
    fanned = data_run(proj, env, source, args.chunk_size, "fan_out")
    unchanged = data_run(proj, env, source, args.chunk_size, "fan_out_unchanged")
    steps = fanned["mapped"]["steps"]
    out = {
        "chunk_size": args.chunk_size,
        "parallelism": args.parallelism,
        "single": single,
        "fan_out": fanned,
        "fan_out_unchanged": unchanged,
        "fingerprint_single": single["fingerprint"],
        "fingerprint_fanout": fanned["fingerprint"],
        "same_dataset": single["fingerprint"] == fanned["fingerprint"]
        and single["filtered_fingerprint"] == fanned["filtered_fingerprint"],
        "wall_ratio": round(fanned["data_steps_s"] / single["data_steps_s"], 3),
        "rss_ratio": round(fanned["data_steps_peak_rss_mb"] / single["data_steps_peak_rss_mb"], 3),
        # what fanning out adds, spread over its mapped steps; and a cache hit's cost
        "overhead_per_mapped_step_s": round(
            (fanned["data_steps_s"] - single["data_steps_s"]) / steps, 3
        ),
        "cached_mapped_step_s": round(unchanged["mapped"]["phase_s"] / steps, 3),
        "first_data_steps_s": fanned["data_steps_s"],
    }
    if args.new:
        added = grow(source, args.new)
        rerun = data_run(proj, env, source, args.chunk_size, "fan_out_new")
        out.update(
            new_images=added,
            fan_out_new=rerun,
            rerun_data_steps_s=rerun["data_steps_s"],
            rerun_share=round(rerun["data_steps_s"] / fanned["data_steps_s"], 3),
        )
    return out


def report_fan_out(result: dict) -> None:
    print(f"\n{result['images']} images, {result['cpus']} CPUs, chunk size {result['chunk_size']}")
    print(f"{'run':18s} {'data steps s':>12s} {'peak RSS MB':>12s} {'mapped ran/cached':>18s}")
    for name in ("single", "fan_out", "fan_out_unchanged", "fan_out_new"):
        if name in result:
            r = result[name]
            mapped = r.get("mapped")
            ran = f"{mapped['ran']}/{mapped['cached']}" if mapped else ""
            print(
                f"{name:18s} {r['data_steps_s']:12.1f} {r['data_steps_peak_rss_mb']:12d} {ran:>18s}"
            )
    print(
        f"same dataset: {result['same_dataset']}; fan-out/single wall {result['wall_ratio']}, "
        f"RSS {result['rss_ratio']}; overhead {result['overhead_per_mapped_step_s']} s and a cache "
        f"hit {result['cached_mapped_step_s']} s a mapped step"
    )
    if "rerun_share" in result:
        print(
            f"{result['new_images']} new images: data steps {result['rerun_data_steps_s']} s, "
            f"{100 * result['rerun_share']:.1f}% of the first run's"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, required=True, help="how many synthetic cells")
    parser.add_argument("--json", metavar="OUT", help="also write the figures here")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "bloodcell" / "scale",
        help="where the synthetic cells are kept between runs",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50, help="training batches (of 64) an epoch")
    parser.add_argument(
        "--held-out",
        type=int,
        default=10000,
        help="the val and test splits each hold 10%% of the images, at most this many",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="run in DIR (a new folder) and keep its ZenML store"
    )
    parser.add_argument(
        "--fan-out",
        action="store_true",
        help="run the data steps (pipelines.data) single and fanned out, and compare them",
    )
    parser.add_argument("--chunk-size", type=int, default=5000, help="with --fan-out")
    parser.add_argument(
        "--parallelism", type=int, default=os.cpu_count(), help="chunk steps at once (--fan-out)"
    )
    parser.add_argument(
        "--new",
        type=float,
        default=0.0,
        help="with --fan-out: then add this share of new cells a class and run again",
    )
    args = parser.parse_args()
    if args.images < 800:
        raise SystemExit(
            f"--images {args.images}: at least 800 (100 a class), so that every split has each "
            "class"
        )
    t0 = time.perf_counter()
    images = synthesize(args.images, args.cache)
    made = time.perf_counter() - t0
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=False)
    workdir = Path(
        args.keep or tempfile.mkdtemp(prefix="bloodcell-scale-", dir=os.environ.get("TMPDIR"))
    )
    if args.fan_out:
        result = {
            "images": args.images,
            "cpus": os.cpu_count(),
            **fan_out_runs(args, images, workdir),
        }
        report_fan_out(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        if not args.keep:
            shutil.rmtree(workdir)
        return
    result = training_run(images, args.images, workdir, args.epochs, args.steps, args.held_out)
    if not (args.keep or result["failed"]):
        shutil.rmtree(workdir)
    result = {
        "images": args.images,
        "cpus": os.cpu_count(),
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "batch_size": BATCH,
        "held_out": args.held_out,
        "synthesis_s": round(made, 1),
        **result,
    }
    print(
        f"\n{args.images} images, {os.cpu_count()} CPUs: whole run {result['wall_s']:.0f} s, "
        f"peak RSS {result['peak_rss_mb']} MB"
    )
    print(f"{'step':16s} {'wall s':>8s} {'images':>9s} {'img/s':>8s} {'peak RSS MB':>12s}")
    for name, s in result["steps"].items():
        if "wall_s" not in s:
            print(f"{name:16s} {s['status']}")
            continue
        rate = f"{s['images_per_s']:8d}" if s["images_per_s"] else f"{'':8s}"
        print(f"{name:16s} {s['wall_s']:8.1f} {s['images']:9d} {rate} {s['peak_rss_mb']:12d}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if result["failed"]:
        raise SystemExit(
            f"the pipeline failed: its log is {result['log']}, its ZenML store {workdir / 'zenml'} "
            f"(ZENML_CONFIG_PATH), kept for a look"
        )


if __name__ == "__main__":
    main()
