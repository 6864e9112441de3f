"""Online augmentation: light transforms drawn afresh for every training batch, inside the
tf.data pipeline (``bloodcell.input_pipeline``). Seeded and stateless: the same seed gives the
same batch."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from bloodcell.dihedral import COUNT, index_table


@dataclass
class OnlineAugment:
    """Light transforms applied on the fly to every training batch; the defaults are the CPU recipe's."""

    dihedral: bool = True  # random flips and transposition: all 8 rotations/reflections
    noise_sigma_max: float = 40.0  # Gaussian noise with sigma ~ U(0, max) on the 0..255 scale; 0: off
    noise_probability: float = 0.5  # fraction of images that get noise
    # colour jitter, a factor per image ~ U(1 - j, 1 + j); 0 leaves it out
    brightness: float = 0.0  # every pixel value scaled
    contrast: float = 0.0  # deviations from the image's mean scaled
    saturation: float = 0.0  # deviations from the pixel's grey level scaled

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")

    def colour(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        n = tf.shape(x)[0]
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 1), 3)

        def factor(j, s):
            return tf.random.stateless_uniform([n, 1, 1, 1], s, 1.0 - j, 1.0 + j)
        if self.brightness:
            x = x * factor(self.brightness, seeds[0])
        if self.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = mean + (x - mean) * factor(self.contrast, seeds[1])
        if self.saturation:
            grey = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
            x = grey + (x - grey) * factor(self.saturation, seeds[2])
        return tf.clip_by_value(x, 0.0, 255.0)

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """``images`` (a batch, any dtype, 0..255) augmented as float32; the same ``seed`` (a
        stateless seed pair) gives the same result."""
        n = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 4)
        x = images
        if self.dihedral:  # one gather: each image through one of the 8 transforms, in its own dtype
            k = tf.random.stateless_uniform([n], seeds[0], 0, COUNT, dtype=tf.int32)
            table = tf.constant(index_table(*images.shape[1:3]))
            x = tf.reshape(tf.gather(tf.reshape(x, [n, -1, 3]), tf.gather(table, k), batch_dims=1), tf.shape(images))
        x = tf.cast(x, tf.float32)
        if self.brightness or self.contrast or self.saturation:
            x = self.colour(x, seed)
        if self.noise_sigma_max > 0:  # noise drawn only for the images that get it
            sigma = tf.random.stateless_uniform([n], seeds[1], 0.0, self.noise_sigma_max)
            noisy = tf.where(tf.random.stateless_uniform([n], seeds[2]) < self.noise_probability)
            noise = tf.random.stateless_normal(tf.concat([tf.shape(noisy)[:1], tf.shape(x)[1:]], 0), seeds[3])
            x = tf.tensor_scatter_nd_add(x, noisy, noise * tf.reshape(tf.gather_nd(sigma, noisy), [-1, 1, 1, 1]))
            x = tf.clip_by_value(x, 0.0, 255.0)
        return x
