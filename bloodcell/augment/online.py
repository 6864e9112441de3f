"""Online augmentation: transforms drawn afresh for every training batch, inside the tf.data
pipeline (``bloodcell.model.input_pipeline``). Seeded and stateless: the same seed gives the same
batch.

Besides the 8 rotations/reflections and white noise, the lab-shift transforms make a model expect
another lab's images: another stain (jitter of the haematoxylin/eosin optical densities, hue),
exposure (brightness, contrast, gamma, saturation), a tinted background (per-channel gains: white
balance), another magnification or framing (zoom in, so the cell fills more of the frame), defocus
blur and JPEG compression. Each is off at 0 and drawn per image.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from pydantic import model_validator

from bloodcell.data.dihedral import COUNT, index_table
from bloodcell.options import Options

# optical density <-> haematoxylin/eosin/DAB (Ruifrok & Johnston; skimage.color.rgb_from_hed)
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
# RGB <-> YIQ, for hue rotations
YIQ_FROM_RGB = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
RGB_FROM_YIQ = np.linalg.inv(YIQ_FROM_RGB).astype(np.float32)


class OnlineAugment(Options):
    """Transforms applied on the fly to every training batch. The defaults are flips, rotations and
    noise; every lab-shift transform is off (``configs/train_cpu.yaml`` turns them on)."""

    WHERE = "augment"

    dihedral: bool = True  # random flips and transposition: all 8 rotations/reflections
    noise_sigma_max: float = (
        40.0  # Gaussian noise with sigma ~ U(0, max) on the 0..255 scale; 0: off
    )
    noise_probability: float = 0.5  # fraction of images that get noise
    # colour and exposure, a factor per image ~ U(1 - j, 1 + j); 0 leaves it out
    brightness: float = 0.0  # every pixel value scaled
    contrast: float = 0.0  # deviations from the image's mean scaled
    saturation: float = 0.0  # deviations from the pixel's grey level scaled
    white_balance: float = 0.0  # each channel scaled on its own: a tinted background
    gamma: float = 0.0  # x -> x^g on 0..1, log g ~ U(-log(1 + j), log(1 + j))
    hue: float = 0.0  # hue rotated by up to this fraction of a turn
    stain: float = (
        0.0  # H, E and DAB optical densities scaled by U(1 - j, 1 + j) and shifted by U(-j, j) / 4
    )
    # magnification and framing
    zoom_in: float = 1.0  # up to this factor (log-uniform), cropped about a jittered centre; 1: off
    zoom_probability: float = 0.5
    # optics and compression
    blur_sigma_max: float = 0.0  # Gaussian blur with sigma 1/3, 2/3 or all of this (px), or none
    blur_probability: float = 0.3
    jpeg_quality_min: int = 0  # JPEG at a quality ~ U(min, 95); 0: off
    jpeg_probability: float = 0.3

    @model_validator(mode="after")
    def _check(self) -> OnlineAugment:
        for name in ("brightness", "contrast", "saturation", "white_balance", "stain"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.gamma < 2.0 or not 0.0 <= self.hue <= 0.5:
            raise ValueError(
                f"augment.gamma must be in [0, 2) and hue in [0, 0.5], got {self.gamma}, {self.hue}"
            )
        if not 1.0 <= self.zoom_in <= 4.0:
            raise ValueError(f"augment.zoom_in must be in [1, 4], got {self.zoom_in}")
        if self.blur_sigma_max < 0 or not (
            self.jpeg_quality_min == 0 or 5 <= self.jpeg_quality_min <= 95
        ):
            raise ValueError(
                f"augment.blur_sigma_max must be >= 0 and jpeg_quality_min 0 or 5..95, "
                f"got {self.blur_sigma_max}, {self.jpeg_quality_min}"
            )
        for name in type(self).model_fields:
            if name.endswith("_probability") and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        return self

    @property
    def lab_shift(self) -> bool:
        """Whether any of the lab-shift transforms is on."""
        return bool(
            self.brightness
            or self.contrast
            or self.saturation
            or self.white_balance
            or self.gamma
            or self.hue
            or self.stain
            or self.zoom_in > 1
            or self.blur_sigma_max
            or self.jpeg_quality_min
        )

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """``images`` (a batch, any dtype, 0..255) augmented as float32; the same ``seed`` (a
        stateless seed pair) gives the same result."""
        n = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 8)
        x = images
        if (
            self.dihedral
        ):  # one gather: each image through one of the 8 transforms, in its own dtype
            k = tf.random.stateless_uniform([n], seeds[0], 0, COUNT, dtype=tf.int32)
            table = tf.constant(index_table(*images.shape[1:3]))
            x = tf.reshape(
                tf.gather(tf.reshape(x, [n, -1, 3]), tf.gather(table, k), batch_dims=1),
                tf.shape(images),
            )
        x = tf.cast(x, tf.float32)
        if self.zoom_in > 1:
            x = self.zoom(x, seeds[4])
        x = self.colour(x, seeds[5])
        if self.blur_sigma_max > 0:
            x = self.blur(x, seeds[6])
        if self.jpeg_quality_min:
            x = self.jpeg(x, seeds[7])
        if self.noise_sigma_max > 0:  # noise drawn only for the images that get it
            sigma = tf.random.stateless_uniform([n], seeds[1], 0.0, self.noise_sigma_max)
            noisy = tf.where(tf.random.stateless_uniform([n], seeds[2]) < self.noise_probability)
            noise = tf.random.stateless_normal(
                tf.concat([tf.shape(noisy)[:1], tf.shape(x)[1:]], 0), seeds[3]
            )
            x = tf.tensor_scatter_nd_add(
                x, noisy, noise * tf.reshape(tf.gather_nd(sigma, noisy), [-1, 1, 1, 1])
            )
            x = tf.clip_by_value(x, 0.0, 255.0)
        return x

    def colour(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Stain, white balance, hue, saturation, brightness, contrast and gamma, per image."""
        n = tf.shape(x)[0]
        s = tf.random.experimental.stateless_split(seed, 10)

        def factor(j, seed_, shape=(1, 1, 1)):
            return tf.random.stateless_uniform([n, *shape], seed_, 1.0 - j, 1.0 + j)

        if self.stain:  # in optical density: H, E, DAB scaled and shifted
            od = -tf.math.log((x + 1.0) / 256.0)
            hed = tf.einsum("bhwc,cd->bhwd", od, tf.constant(HED_FROM_RGB))
            shift = tf.random.stateless_uniform([n, 1, 1, 3], s[0], -self.stain / 4, self.stain / 4)
            hed = hed * factor(self.stain, s[1], (1, 1, 3)) + shift
            od = tf.einsum("bhwc,cd->bhwd", hed, tf.constant(RGB_FROM_HED))
            x = 256.0 * tf.exp(-tf.maximum(od, 0.0)) - 1.0
        if self.white_balance:
            x = x * factor(self.white_balance, s[2], (1, 1, 3))
        if self.hue:
            angle = tf.random.stateless_uniform([n], s[3], -self.hue, self.hue) * 2.0 * math.pi
            c, si = tf.cos(angle), tf.sin(angle)
            one, zero = tf.ones_like(c), tf.zeros_like(c)
            rotation = tf.stack(
                [
                    tf.stack([one, zero, zero], -1),
                    tf.stack([zero, c, -si], -1),
                    tf.stack([zero, si, c], -1),
                ],
                1,
            )
            yiq = tf.einsum("bhwc,dc->bhwd", x, tf.constant(YIQ_FROM_RGB))
            yiq = tf.einsum("bhwc,bdc->bhwd", yiq, rotation)
            x = tf.einsum("bhwc,dc->bhwd", yiq, tf.constant(RGB_FROM_YIQ))
        if self.saturation:
            grey = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
            x = grey + (x - grey) * factor(self.saturation, s[4])
        if self.brightness:
            x = x * factor(self.brightness, s[5])
        if self.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = mean + (x - mean) * factor(self.contrast, s[6])
        x = tf.clip_by_value(x, 0.0, 255.0)
        if self.gamma:
            log_g = tf.random.stateless_uniform(
                [n, 1, 1, 1], s[7], -math.log1p(self.gamma), math.log1p(self.gamma)
            )
            x = 255.0 * tf.pow(x / 255.0, tf.exp(log_g))
        return x

    def zoom(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Zoom in by a factor ~ log-U(1, zoom_in) on a share of the images, about a centre jittered
        by up to a quarter of the room the crop leaves (the cell is centred: it stays in the frame;
        bilinear; the other images are left exactly as they are)."""
        n = tf.shape(x)[0]
        s = tf.random.experimental.stateless_split(seed, 3)
        scale = tf.exp(tf.random.stateless_uniform([n], s[0], 0.0, math.log(self.zoom_in)))
        scale = tf.where(tf.random.stateless_uniform([n], s[1]) < self.zoom_probability, scale, 1.0)
        half = 0.5 / scale
        centre = 0.5 + 0.25 * (0.5 - half)[:, None] * tf.random.stateless_uniform(
            [n, 2], s[2], -1.0, 1.0
        )
        boxes = tf.concat(
            [centre - half[:, None], centre + half[:, None]], axis=1
        )  # y1, x1, y2, x2
        return tf.image.crop_and_resize(x, boxes, tf.range(n), tf.shape(x)[1:3])

    def blur(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Gaussian blur (defocus) on a share of the images, sigma 1/3, 2/3 or all of blur_sigma_max
        (each level computed only for the images drawn for it)."""
        n = tf.shape(x)[0]
        s = tf.random.experimental.stateless_split(seed, 2)
        which = tf.random.stateless_uniform([n], s[0], 1, 4, dtype=tf.int32)
        which = tf.where(tf.random.stateless_uniform([n], s[1]) < self.blur_probability, which, 0)
        for level in (1, 2, 3):
            picked = tf.where(which == level)
            sigma = self.blur_sigma_max * level / 3

            def blurred(x=x, picked=picked, sigma=sigma):
                return tf.tensor_scatter_nd_update(
                    x, picked, _gaussian_blur(tf.gather_nd(x, picked), sigma)
                )

            x = tf.cond(
                tf.size(picked) > 0, blurred, lambda x=x: x
            )  # convolutions reject an empty batch
        return x

    def jpeg(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """JPEG compression at quality ~ U(jpeg_quality_min, 95) on a share of the images."""
        n = tf.shape(x)[0]
        s = tf.random.experimental.stateless_split(seed, 2)
        picked = tf.where(tf.random.stateless_uniform([n], s[0]) < self.jpeg_probability)[:, 0]
        quality = tf.random.stateless_uniform(
            tf.shape(picked), s[1], self.jpeg_quality_min, 96, dtype=tf.int32
        )

        def compress(args):
            image, q = args
            return tf.image.adjust_jpeg_quality(image / 255.0, q) * 255.0

        def compressed():
            images = tf.map_fn(
                compress, (tf.gather(x, picked), quality), fn_output_signature=tf.float32
            )
            return tf.tensor_scatter_nd_update(x, picked[:, None], images)

        return tf.cond(tf.size(picked) > 0, compressed, lambda: x)


def _gaussian_blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
    """A separable Gaussian blur of a float image batch (reflected borders)."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-3)) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    padded = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    rows = tf.constant(np.tile(taps.reshape(-1, 1, 1, 1), (1, 1, 3, 1)))
    cols = tf.constant(np.tile(taps.reshape(1, -1, 1, 1), (1, 1, 3, 1)))
    out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")
