"""Outlier filter on pbc96 with injected outliers: share of injected removed, share of genuine
removed.

    .venv/bin/python benchmarks/outlier_filter.py [--data ../shared/data/pbc96]

Injected, each labelled with a random class: scikit-image's bundled natural photos (centre-cropped,
resized to 96x96), each once alone and once as a group of 20 copies; flat, gradient and noise
images. The filter runs with the parameters of configs/train_cpu.yaml.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bloodcell.data.dataset import Dataset  # noqa: E402
from bloodcell.data.ingest import read_source  # noqa: E402
from bloodcell.data.outliers import OutlierConfig, filter_outliers  # noqa: E402

PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "horse",
    "immunohistochemistry",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "logo",
)


def to_96(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    pil = Image.fromarray(img).convert("RGB")
    side = min(pil.size)
    left, top = (pil.size[0] - side) // 2, (pil.size[1] - side) // 2
    return np.asarray(
        pil.crop((left, top, left + side, top + side)).resize((96, 96), Image.Resampling.LANCZOS)
    )


def injected(rng: np.random.Generator) -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in PHOTOS:
        try:
            photo = to_96(getattr(skimage.data, name)())
        except Exception as exc:  # an image that needs a download is skipped, and said so
            print(f"skipping skimage.data.{name}: {exc.__class__.__name__}")
            continue
        out[f"photo/{name}/alone"] = photo[None]
        out[f"photo/{name}/copies"] = np.repeat(photo[None], 20, axis=0)
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    for level in (0, 30, 128, 200, 255):
        out[f"flat/{level}"] = np.full((1, 96, 96, 3), level, np.uint8)
    for axis in (0, 1):
        g = np.broadcast_to(ramp[:, None, None] if axis == 0 else ramp[None, :, None], (96, 96, 3))
        out[f"gradient/{axis}"] = g.astype(np.uint8)[None]
    out["gradient/colour"] = np.stack(
        [*np.meshgrid(ramp, ramp[::-1]), np.full((96, 96), 128.0)], -1
    ).astype(np.uint8)[None]
    for k in range(5):
        out[f"noise/uniform{k}"] = rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
        out[f"noise/gauss{k}"] = np.clip(rng.normal(128, 40, (1, 96, 96, 3)), 0, 255).astype(
            np.uint8
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/pbc96")
    )
    parser.add_argument(
        "--config", default=str(Path(__file__).resolve().parent.parent / "configs/train_cpu.yaml")
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    genuine = read_source(args.data)
    extra = injected(rng)
    images, ids = [], []
    for name, imgs in extra.items():
        images.append(imgs)
        ids += [f"injected/{name}/{k}" for k in range(len(imgs))]
    ds = Dataset(
        images=np.concatenate([genuine.images, *images]),
        labels=np.concatenate([genuine.labels, rng.integers(0, 8, len(ids))]),
        ids=genuine.ids + ids,
    )
    cfg = OutlierConfig.from_pipeline_config(args.config)
    start = time.perf_counter()
    result = filter_outliers(ds, cfg)
    wall = time.perf_counter() - start
    removed = set(result.table[result.table.flagged].id)
    inj_removed = sum(i in removed for i in ids)
    gen_removed = sum(i in removed for i in genuine.ids)
    missed = [i for i in ids if i not in removed]
    print(f"dataset: {len(genuine)} genuine + {len(ids)} injected ({len(extra)} kinds)")
    print(
        f"injected outliers removed: {inj_removed}/{len(ids)} = {100 * inj_removed / len(ids):.2f}%"
    )
    print(
        f"genuine cells removed:     {gen_removed}/{len(genuine)} = "
        f"{100 * gen_removed / len(genuine):.3f}%"
    )
    print(f"filter wall time on {len(ds)} images: {wall:.1f} s")
    if missed:
        print("missed:", ", ".join(missed[:20]))
    print(
        result.table[result.table.flagged].reason.str.split(">").str[0].value_counts().to_string()
    )


if __name__ == "__main__":
    main()
