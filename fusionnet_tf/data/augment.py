"""Training augmentation in TensorFlow ops (runs inside ``tf.data`` map).

Augmentation runs in the dataset map, not in the model: it then overlaps with
the training step on the accelerator, stays out of exported models, and the
label is deformed with exactly the same field as the image.

Per tile, in this order (each one can be switched off in ``AugmentConfig``):

1. elastic deformation: a random displacement vector on a coarse
   ``elastic_grid`` x ``elastic_grid`` lattice of control points spanning the
   tile (x and y drawn independently, standard deviation
   ``elastic_displacement`` pixels), upsampled to full resolution with bicubic
   interpolation (that upsampling is what makes the field smooth: no
   full-resolution Gaussian blur is needed). The tile is cut from the
   reflect-padded slice with a margin, so the warp samples real context, and
   sampled with bilinear interpolation; the label goes through the same field
   (bilinear, then thresholded at 0.5, so it stays binary);
2. one of the 8 dihedral transforms (``fusionnet_tf.dihedral``);
3. image-only intensity jitter: gamma, contrast, brightness, Gaussian noise
   and (optional, off by default) Gaussian blur; the image is clipped to [0, 1].

All randomness is stateless: every draw takes a seed derived from the global
seed and the tile index, so a parallel map is reproducible and every tile gets
its own field.
"""

import dataclasses
import math

import tensorflow as tf

from fusionnet_tf.dihedral import dihedral_tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; the defaults are the training defaults.

    Attributes:
        elastic: bool. Elastic deformation on/off. Defaults to True.
        elastic_grid: int >= 2. Control points per side of the coarse
            displacement grid. Defaults to 5.
        elastic_displacement: float >= 0. Standard deviation, in pixels, of
            each displacement component at each control point. Defaults to 6.0.
        dihedral: bool. Random flip / 90-degree rotation (8 transforms).
            Defaults to True.
        gamma: float >= 0. Gamma is ``exp(u)``, ``u ~ U(-gamma, gamma)``.
            Defaults to 0.2 (gamma in [0.82, 1.22]).
        contrast: float in [0, 1). Contrast factor ``U(1 - c, 1 + c)`` around
            the tile mean. Defaults to 0.2.
        brightness: float >= 0. Additive shift ``U(-b, b)``. Defaults to 0.1.
        noise: float >= 0. Gaussian noise with standard deviation
            ``U(0, noise)`` per tile. Defaults to 0.03.
        blur_probability: float in [0, 1]. Chance of a Gaussian blur per tile.
            Defaults to 0.0 (off).
        blur_sigma: float > 0. Largest blur sigma in pixels; the sigma is
            ``U(0.3, blur_sigma)``. Defaults to 1.0.

    Example:
    >>> AugmentConfig(elastic_displacement=4.0, noise=0.0)
    >>> AugmentConfig.none()          # everything off: exact crops
    """

    elastic: bool = True
    elastic_grid: int = 5
    elastic_displacement: float = 6.0
    dihedral: bool = True
    gamma: float = 0.2
    contrast: float = 0.2
    brightness: float = 0.1
    noise: float = 0.03
    blur_probability: float = 0.0
    blur_sigma: float = 1.0

    def __post_init__(self):
        for name in ("elastic_displacement", "gamma", "brightness", "noise"):
            _check_number(name, getattr(self, name), low=0.0)
        _check_number("contrast", self.contrast, low=0.0, high=1.0, high_open=True)
        _check_number("blur_probability", self.blur_probability, low=0.0, high=1.0)
        _check_number("blur_sigma", self.blur_sigma, low=1e-3)
        if isinstance(self.elastic_grid, bool) or not isinstance(self.elastic_grid, int) \
                or self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be an int >= 2; received {self.elastic_grid!r}")

    @classmethod
    def none(cls):
        """A config with every augmentation switched off."""
        return cls(elastic=False, dihedral=False, gamma=0.0, contrast=0.0, brightness=0.0,
                   noise=0.0, blur_probability=0.0)

    @classmethod
    def from_dict(cls, values):
        """Build from a dict (e.g. a YAML section); unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"unknown augmentation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**values)

    def to_dict(self):
        """The settings as a plain dict (YAML/JSON friendly)."""
        return dataclasses.asdict(self)

    @property
    def elastic_active(self):
        """True if the elastic deformation changes anything."""
        return bool(self.elastic) and self.elastic_displacement > 0

    @property
    def margin(self):
        """Context in pixels cut around each tile for the warp (0 without elastic)."""
        if not self.elastic_active:
            return 0
        return int(math.ceil(4.0 * self.elastic_displacement)) + 2

    @property
    def intensity_active(self):
        """True if any image-only intensity jitter is on."""
        return (self.gamma > 0 or self.contrast > 0 or self.brightness > 0 or self.noise > 0
                or self.blur_probability > 0)


def _check_number(name, value, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number; received {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; received {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}; received {value!r}")


def as_augment_config(augment):
    """Resolve the ``augment`` argument of the dataset builders.

    Args:
        augment: None (default augmentation), False (none), True (default),
            a dict of ``AugmentConfig`` fields, or an ``AugmentConfig``.

    Returns:
        AugmentConfig.

    Raises:
        ValueError: for anything else.
    """
    if augment is None or augment is True:
        return AugmentConfig()
    if augment is False:
        return AugmentConfig.none()
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, dict):
        return AugmentConfig.from_dict(augment)
    raise ValueError(
        f"augment must be None, True, False, a dict or an AugmentConfig; received {type(augment).__name__}"
    )


# --------------------------------------------------------------------------- #
# Elastic deformation
# --------------------------------------------------------------------------- #


def elastic_field(seed, size, grid=5, displacement=6.0):
    """A smooth random displacement field.

    Args:
        seed: int32/int64 tensor of shape (2,), a stateless RNG seed.
        size: int, tile side T.
        grid: int, control points per side.
        displacement: float, standard deviation in pixels of each component
            at the control points.

    Returns:
        float32 tensor (T, T, 2): (dy, dx) displacement of each output pixel.
        dy and dx come from independent normal draws.

    Example:
    >>> field = elastic_field(tf.constant([1, 2]), 256)
    """
    coarse = tf.random.stateless_normal([1, grid, grid, 2], seed=seed, stddev=displacement)
    return tf.image.resize(coarse, [size, size], method="bicubic")[0]


def warp_window(window, field, margin):
    """Sample a (S, S, C) window at ``tile pixel + margin + field`` (bilinear).

    Args:
        window: float32 (S, S, C) with S = T + 2 * margin.
        field: float32 (T, T, 2) displacement (dy, dx) in pixels.
        margin: int, context on each side of the tile inside the window.

    Returns:
        float32 (T, T, C). Sample points beyond the window are clamped to its
        edge (the window itself is reflect-padded context, and the margin
        covers 4 standard deviations of the displacement).
    """
    size = field.shape[0]
    side = window.shape[0]
    channels = window.shape[-1]
    base = tf.range(size, dtype=tf.float32) + float(margin)
    y = tf.clip_by_value(base[:, None] + field[..., 0], 0.0, side - 1.0)
    x = tf.clip_by_value(base[None, :] + field[..., 1], 0.0, side - 1.0)
    y0 = tf.minimum(tf.floor(y), side - 2.0)
    x0 = tf.minimum(tf.floor(x), side - 2.0)
    wy = (y - y0)[..., None]
    wx = (x - x0)[..., None]
    index = tf.cast(y0, tf.int32) * side + tf.cast(x0, tf.int32)
    flat = tf.reshape(window, [side * side, channels])
    v00 = tf.gather(flat, index)
    v01 = tf.gather(flat, index + 1)
    v10 = tf.gather(flat, index + side)
    v11 = tf.gather(flat, index + side + 1)
    top = v00 + wx * (v01 - v00)
    bottom = v10 + wx * (v11 - v10)
    return top + wy * (bottom - top)


# --------------------------------------------------------------------------- #
# Dihedral and intensity
# --------------------------------------------------------------------------- #


def random_dihedral(tile, seed):
    """Apply one of the 8 dihedral transforms, chosen by ``seed``, to (T, T, C)."""
    k = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=8, dtype=tf.int32)
    return dihedral_tf(tile, k)


def gaussian_blur(image, sigma, radius):
    """Separable Gaussian blur of a (T, T, 1) image with reflect borders.

    Args:
        image: float32 (T, T, 1).
        sigma: scalar float tensor > 0, in pixels.
        radius: int, kernel half-width (kernel size 2 * radius + 1).

    Returns:
        float32 (T, T, 1).
    """
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    out = tf.nn.conv2d(padded, tf.reshape(kernel, [-1, 1, 1, 1]), 1, "VALID")
    out = tf.nn.conv2d(out, tf.reshape(kernel, [1, -1, 1, 1]), 1, "VALID")
    return out[0]


def intensity_jitter(image, seed, config):
    """Gamma, contrast, brightness, noise and optional blur on a (T, T, 1) image.

    Args:
        image: float32 (T, T, 1) in [0, 1].
        seed: (2,) stateless seed.
        config: AugmentConfig.

    Returns:
        float32 (T, T, 1), clipped to [0, 1].
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    u = tf.random.stateless_uniform([6], seed=seeds[0])
    if config.gamma > 0:
        image = tf.pow(image, tf.exp((2.0 * u[0] - 1.0) * config.gamma))
    if config.contrast > 0:
        mean = tf.reduce_mean(image)
        image = (image - mean) * (1.0 + (2.0 * u[1] - 1.0) * config.contrast) + mean
    if config.brightness > 0:
        image = image + (2.0 * u[2] - 1.0) * config.brightness
    if config.blur_probability > 0:
        sigma = 0.3 + u[4] * max(config.blur_sigma - 0.3, 0.0)
        radius = max(1, int(math.ceil(3.0 * config.blur_sigma)))
        image = tf.cond(u[3] < config.blur_probability,
                        lambda: gaussian_blur(image, sigma, radius), lambda: image)
    if config.noise > 0:
        image = image + tf.random.stateless_normal(tf.shape(image), seed=seeds[1]) * (u[5] * config.noise)
    return tf.clip_by_value(image, 0.0, 1.0)


def augment_window(window, seed, config, tile_size):
    """Deform, transform and jitter one window cut with ``config.margin`` of context.

    Args:
        window: float32 (S, S, 2), S = tile_size + 2 * config.margin; channel 0
            is the image in [0, 1], channel 1 the label in {0, 1}.
        seed: (2,) stateless seed for this tile.
        config: AugmentConfig.
        tile_size: int T.

    Returns:
        ``(image, label)``: float32 (T, T, 1) in [0, 1] and float32 (T, T, 1)
        in {0, 1}.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if config.elastic_active:
        field = elastic_field(seeds[0], tile_size, config.elastic_grid, config.elastic_displacement)
        tile = warp_window(window, field, config.margin)
        label = tf.cast(tile[..., 1:] >= 0.5, tf.float32)
    else:
        tile = window
        label = tile[..., 1:]
    if config.dihedral:
        both = random_dihedral(tf.concat([tile[..., :1], label], axis=-1), seeds[1])
        image, label = both[..., :1], both[..., 1:]
    else:
        image = tile[..., :1]
    if config.intensity_active:
        image = intensity_jitter(image, seeds[2], config)
    return image, label
