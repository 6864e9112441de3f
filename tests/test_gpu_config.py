"""configs/train_gpu.yaml runs as written, on this CPU: EfficientNetV2S (weights null), fine-tuning,
TTA, MirroredStrategy, and the heavy steps placed on the step operator the config names (here the
local_gpu flavor, each step in its own process). Only sizes, the data path and mixed precision
are changed: float16 is a GPU feature, so train and fine-tune run under ``auto`` (bfloat16 on a
CPU that has it), which takes the same mixed-precision path."""

from __future__ import annotations

import pytest
import yaml

from bloodcell.model.build import all_layers
from bloodcell.model.training import TrainConfig

from sandbox import make_sandbox, register_local_gpu_stack, zenml

pytestmark = pytest.mark.pipeline

OPERATOR = "gpu-config-test"  # the config's `gpu`, under a name no other test registers


def test_train_gpu_config_runs_on_cpu_with_tiny_sizes(tmp_path):
    from zenml.client import Client

    proj = make_sandbox(tmp_path / "proj")
    text = (proj / "configs" / "train_gpu.yaml").read_text()
    assert text.count("step_operator: gpu\n") == 4  # rebalance, train, fine_tune, evaluate
    cfg = yaml.safe_load(text.replace("step_operator: gpu\n", f"step_operator: {OPERATOR}\n"))
    steps = cfg["steps"]
    assert steps["train"]["parameters"]["architecture"] == "efficientnetv2s"
    assert steps["train"]["parameters"]["network"]["weights"] == "imagenet"
    cfg["model"] = {"name": "bloodcell-gpu-config-test"}
    steps["ingest"]["parameters"]["source"] = "data/sample"
    # the other labs' sets live outside the project: evaluated elsewhere (test_any_lab.py)
    assert [s["name"] for s in steps.pop("ingest_external")["parameters"]["external"]] == [
        "jtsc",
        "cellavision_blog",
    ]
    steps["filter_outliers"] = {"parameters": {"n_components": 16}}
    steps["rebalance"]["parameters"]["multiplier"] = 1.0
    steps["train"]["parameters"]["network"]["weights"] = None
    for name in ("train", "fine_tune"):
        p = steps[name]["parameters"]
        assert p["training"]["mixed_precision"] == "float16"
        p["training"].update(epochs=1, batch_size=32, mixed_precision="auto")
        if "recalibrate_samples_per_epoch" in p["training"]:
            p["training"]["recalibrate_samples_per_epoch"] = 64
        p["min_val_accuracy"] = 0.0
    steps["evaluate"]["parameters"].update(
        corruption_samples=8, non_cell_images=2, min_plain_accuracy=0.0, min_noisy_accuracy=0.0
    )
    steps["fine_tune"]["parameters"]["referral"] = {
        "fit_samples": 128
    }  # the rule's features: 8 TTA views each
    (proj / "configs" / "gpu_tiny.yaml").write_text(yaml.safe_dump(cfg))

    register_local_gpu_stack(proj, OPERATOR, OPERATOR, "[0]", tmp_path / "locks")
    try:
        zenml(
            proj,
            "pipeline",
            "run",
            "pipelines.training.training_pipeline",
            "-c",
            "configs/gpu_tiny.yaml",
        )
    finally:
        zenml(proj, "stack", "set", "default", check=False)
    run = Client().get_pipeline("training_pipeline").last_run
    assert str(run.status) == "completed"
    for name in ("rebalance", "train", "fine_tune", "evaluate"):
        assert run.steps[name].config.step_operator == OPERATOR
    assert run.steps["split"].config.step_operator is None
    train_meta = run.steps["train"].outputs["training_history"][0].load().info
    assert (
        train_meta["architecture"] == "efficientnetv2s" and train_meta["distribute"] == "mirrored"
    )
    assert (
        train_meta["compute_policy"]
        == TrainConfig.from_dict({"mixed_precision": "auto"}).compute_policy
    )
    ft = run.steps["fine_tune"].run_metadata
    assert (
        ft["skipped"] is False
        and ft["unfrozen_layers"] > 0
        and ft["epochs"] == 1
        and ft["tta"] is True
    )
    model = run.steps["fine_tune"].outputs["shipped_model"][0].load()
    assert model.name == "efficientnetv2s_transfer_tta" and model.output_shape == (None, 8)
    # shipped computing in float32, whatever it was trained in
    assert {layer.dtype_policy.name for layer in [model, *all_layers(model)]} == {"float32"}
