"""Training augmentation in TensorFlow ops (runs inside ``tf.data`` map).

Augmentation runs in the dataset map, not in the model: it then overlaps with
the training step on the accelerator, stays out of exported models, and the
label is deformed with exactly the same field as the image.

Per tile, in this order (each one can be switched off in ``AugmentConfig``):

1. elastic deformation: a random displacement vector on a coarse
   ``elastic_grid`` x ``elastic_grid`` lattice of control points spanning the
   tile (x and y drawn independently, standard deviation
   ``elastic_displacement`` pixels), interpolated to full resolution with a
   cubic B-spline (two small matrix products per component: that is what
   makes the field smooth, no full-resolution Gaussian blur is needed). The
   control draws are clipped at ``ELASTIC_CLIP`` = 3 of their own standard
   deviations (``elastic_limit``; 0.3% of the draws, -0.3% on the std), and
   the warp samples the reflect-padded slice around the tile with a margin
   of real context just wider than that clip, so every sample point lies
   inside it; sampling is bilinear, and the label goes through the same
   field (bilinear, then thresholded at 0.5, so it stays binary);
2. one of the 8 dihedral transforms of ``fusionnet_tf.dihedral``; with the
   elastic warp on, it is folded into the sampling coordinates (row flips of
   the small spline factors plus a final transpose), which gives exactly
   ``dihedral_tf(warped, k)`` without another pass over the tile;
3. image-only intensity jitter: gamma, contrast, brightness, Gaussian noise
   and (optional, off by default) Gaussian blur; the image is clipped to [0, 1].

All randomness is stateless: every draw takes a seed derived from the global
seed and the tile index, so a parallel map is reproducible and every tile gets
its own field.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from fusionnet_tf.checks import check_int


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; the defaults are the training defaults.

    Attributes:
        elastic: bool. Elastic deformation on/off. Defaults to True.
        elastic_grid: int >= 2. Control points per side of the coarse
            displacement grid. Defaults to 5.
        elastic_displacement: float >= 0. Standard deviation, in pixels, of
            each displacement component of the smooth field at the interior
            control points; over a whole tile the std is within a few percent
            of it (lower between control points, higher at the tile border,
            where fewer control points share the weight: up to 1.36x at the
            corners). The control draws are clipped at ``ELASTIC_CLIP``
            standard deviations (see ``elastic_limit``), which lowers the std
            by 0.3%. The context margin grows with it (``margin`` =
            ``ceil(6 * elastic_displacement) + 2`` for ``elastic_grid >= 3``:
            38 px at 6.0). Defaults to 6.0.
        dihedral: bool. Random flip / 90-degree rotation (8 transforms).
            Defaults to True.
        gamma: float >= 0. Gamma is ``exp(u)``, ``u ~ U(-gamma, gamma)``.
            Defaults to 0.2 (gamma in [0.82, 1.22]).
        contrast: float in [0, 1). Contrast factor ``U(1 - c, 1 + c)`` around
            the tile mean. Defaults to 0.2.
        brightness: float >= 0. Additive shift ``U(-b, b)``. Defaults to 0.1.
        noise: float >= 0. Gaussian noise with standard deviation
            ``U(0, noise)`` per tile, cut at a random offset from a fixed
            bank of N(0, 1) draws (see ``noise_bank``). Defaults to 0.03.
        blur_probability: float in [0, 1]. Chance of a Gaussian blur per tile.
            Defaults to 0.0 (off).
        blur_sigma: float > 0. Largest blur sigma in pixels; the sigma is
            ``U(0.3, blur_sigma)``. The kernel radius is
            ``ceil(3 * blur_sigma)`` (``blur_radius``) and, with the blur on,
            the tile size must exceed it (checked by the dataset builders).
            Defaults to 1.0.

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
        check_int("elastic_grid", self.elastic_grid, 2)

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
    def elastic_limit(self):
        """Clip bound in pixels of the control displacements (0.0 without elastic)."""
        if not self.elastic_active:
            return 0.0
        return elastic_limit(self.elastic_grid, self.elastic_displacement)

    @property
    def margin(self):
        """Context in pixels cut around each tile for the warp (0 without elastic).

        ``ceil(elastic_limit) + 2``: the field never exceeds the clip bound
        (it is a convex combination of the control values), so every
        bilinear sample, neighbours included, stays inside the window.
        """
        if not self.elastic_active:
            return 0
        return int(math.ceil(self.elastic_limit)) + 2

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


def _cubic_bspline(t):
    t = np.abs(t)
    return np.where(t < 1, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2, (2.0 - t) ** 3 / 6.0, 0.0))


def spline_basis(size, grid):
    """Cubic B-spline weights that spread ``grid`` control points over ``size`` pixels.

    Args:
        size: int, number of pixels T.
        grid: int, number of control points g (the first sits on pixel 0, the
            last on pixel T - 1).

    Returns:
        float32 NumPy array (T, g); rows are non-negative and sum to 1, so an
        interpolated field never exceeds its largest control value.
    """
    position = np.arange(size) * (grid - 1) / max(size - 1, 1)
    weights = _cubic_bspline(position[:, None] - np.arange(grid)[None, :])
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


ELASTIC_CLIP = 3.0  # control draws are clipped at this many of their standard deviations


def _spline_gain(grid):
    """Std of the control draws per pixel of field std at an interior control point.

    The field is a tensor product, ``dy = B G B^T``: at control point (a, b)
    it is ``sum_ij w_i w_j G_ij`` with ``w`` the 1-D spline weights at a
    knot (1/6, 2/3, 1/6), so its std is ``stddev * sum_i w_i**2`` (0.5) and
    the gain is ``1 / sum_i w_i**2`` (2.0; ``1 / sqrt(sum w**2)`` would only
    hold for a 1-D interpolation and gives a field 29% too weak).

    Args:
        grid: int g >= 2 (for g = 2 both control points are tile corners).

    Returns:
        float.
    """
    weights = _cubic_bspline(np.arange(grid) - (grid - 1) // 2)
    weights = weights / weights.sum()
    return float(1.0 / np.sum(weights**2))


def elastic_limit(grid, displacement):
    """Clip bound, in pixels, of the control displacements: ``ELASTIC_CLIP`` draw stds.

    With a field std ``displacement`` the draws have std ``2 * displacement``
    (``_spline_gain``), so the bound is ``6 * displacement``: 0.27% of the
    draws are clipped and the field's std drops by 0.3%. The field never
    exceeds the bound, so ``AugmentConfig.margin`` is derived from it.

    Args:
        grid: int g >= 2.
        displacement: float >= 0, field std in pixels.

    Returns:
        float >= 0.
    """
    return ELASTIC_CLIP * displacement * _spline_gain(grid)


def coarse_displacements(seed, grid, displacement, limit):
    """Random (dy, dx) control-point displacements, drawn independently.

    Args:
        seed: (2,) stateless seed.
        grid: int g.
        displacement: float, target standard deviation (pixels) of the smooth
            field at the interior control points; the draws have
            ``_spline_gain(grid)`` times that std.
        limit: float, clip each control value to [-limit, limit] (keeps the
            warp inside the context margin); the pipeline uses
            ``elastic_limit(grid, displacement)``.

    Returns:
        float32 tensor (2, g, g): [dy, dx].
    """
    stddev = displacement * _spline_gain(grid)
    draws = tf.random.stateless_normal([2, grid, grid], seed=seed, stddev=stddev)
    return tf.clip_by_value(draws, -limit, limit)


def _dihedral_flips(left, right, k):
    """Row flips of the factors of ``F = L M R^T`` for transform ``k``, and whether to transpose.

    Transform ``k`` of ``fusionnet_tf.dihedral`` maps output pixel (i, j) to
    source pixel ``(a(i), b(j))`` or, for an odd number of quarter turns,
    ``(a(j), b(i))``, with ``a``, ``b`` each the identity or a reversal. The
    reversals are applied to the rows of the small factors L (T, g + 1) and
    R; the transpose is left to the caller, on the sampled tile: folding it
    into the coordinates too would make the gather walk the source column by
    column, which is much slower than a (T, T, 2) transpose.

    Returns:
        ``(left, right, transpose)`` with ``transpose`` a bool scalar tensor.
    """
    k = tf.convert_to_tensor(k, tf.int32)
    turns = k % 4
    odd = tf.equal(turns % 2, 1)
    # flips of the output rows / columns after the turns and the final W flip
    flip_rows = tf.logical_or(tf.equal(turns, 1), tf.equal(turns, 2))
    flip_cols = tf.math.logical_xor(tf.logical_or(tf.equal(turns, 2), tf.equal(turns, 3)), k >= 4)
    # for a transposed result, output rows come from R's rows and vice versa
    flip_left = tf.where(odd, flip_cols, flip_rows)
    flip_right = tf.where(odd, flip_rows, flip_cols)
    left = tf.where(flip_left, tf.reverse(left, [0]), left)
    right = tf.where(flip_right, tf.reverse(right, [0]), right)
    return left, right, odd


def sampling_coordinates(coarse, basis, origin_y, origin_x, k=0):
    """Source coordinates of every tile pixel: origin + pixel + smooth displacement.

    ``Y[i, j] = origin_y + i + dy[i, j]`` and ``X[i, j] = origin_x + j + dx[i, j]``
    with ``dy = B Gy B^T``, ``dx = B Gx B^T`` (B the spline basis), computed as
    two small matrix products each, the identity ramp folded in. Transform
    ``k`` of ``fusionnet_tf.dihedral`` is folded in as row reversals of the
    factors, plus a transpose flag: sampling with ``(Y, X)`` and then
    transposing H and W when ``transpose`` is true equals
    ``dihedral_tf(warped_tile, k)``.

    Args:
        coarse: float32 (2, g, g) control displacements [dy, dx].
        basis: float32 (T, g) from ``spline_basis``.
        origin_y, origin_x: float32 scalars, source position of tile pixel (0, 0).
        k: int or int32 scalar tensor in 0..7.

    Returns:
        ``(Y, X, transpose)``: two float32 (T, T) tensors and a bool scalar tensor.
    """
    basis = tf.convert_to_tensor(basis)
    size, grid = basis.shape
    ramp = tf.range(size, dtype=tf.float32)[:, None]
    with_ones = tf.concat([basis, tf.ones([size, 1])], axis=1)
    with_y = tf.concat([basis, ramp + origin_y], axis=1)
    with_x = tf.concat([basis, ramp + origin_x], axis=1)
    corner = tf.scatter_nd([[grid, grid]], [1.0], [grid + 1, grid + 1])
    middle_y = tf.pad(coarse[0], [[0, 1], [0, 1]]) + corner
    middle_x = tf.pad(coarse[1], [[0, 1], [0, 1]]) + corner
    # rows of the left factor index tile rows, rows of the right factor tile columns
    left_y, right_y, transpose = _dihedral_flips(with_y, with_ones, k)
    left_x, right_x, _ = _dihedral_flips(with_ones, with_x, k)
    ys = tf.matmul(tf.matmul(left_y, middle_y), right_y, transpose_b=True)
    xs = tf.matmul(tf.matmul(left_x, middle_x), right_x, transpose_b=True)
    return ys, xs, transpose


def elastic_field(seed, size, grid=5, displacement=6.0):
    """A smooth random displacement field (for inspection and tests).

    Args:
        seed: (2,) stateless seed.
        size: int, tile side T.
        grid: int, control points per side.
        displacement: float, standard deviation in pixels of each component
            at the interior control points (see ``AugmentConfig``).

    Returns:
        float32 tensor (T, T, 2): (dy, dx) of each pixel; dy and dx come from
        independent draws, clipped at ``elastic_limit(grid, displacement)``.
        This is the field ``train_dataset`` uses for a tile whose per-tile
        seed is ``seed``'s elastic sub-seed.

    Example:
    >>> field = elastic_field(tf.constant([1, 2]), 256)
    """
    coarse = coarse_displacements(seed, grid, displacement, elastic_limit(grid, displacement))
    y, x, _ = sampling_coordinates(coarse, spline_basis(size, grid), 0.0, 0.0)
    ramp = tf.range(size, dtype=tf.float32)
    return tf.stack([y - ramp[:, None], x - ramp[None, :]], axis=-1)


def bilinear_corners(y, x, stride, offset=0):
    """Flat index of the top-left neighbour and the fractional offsets.

    Args:
        y, x: float32 (T, T) source coordinates, >= 0.
        stride: int, row length of the flattened source.
        offset: int32 scalar added to every index (e.g. slice start).

    Returns:
        ``(index, wy, wx)``: int32 (T, T) flat index of the top-left
        neighbour, float32 (T, T) fractional row and column offsets in [0, 1).
    """
    y0 = tf.floor(y)
    x0 = tf.floor(x)
    index = tf.cast(y0, tf.int32) * stride + (tf.cast(x0, tf.int32) + offset)
    return index, y - y0, x - x0


def bilinear_blend(top_left, top_right, bottom_left, bottom_right, wy, wx):
    """Bilinear interpolation between four neighbour values (three lerps).

    All arguments broadcast together, e.g. (C, P) corner planes with (P,)
    offsets. Lerps on separate planes are several times faster on a CPU than
    stacking the four weights and reducing over a size-4 last axis.
    """
    top = top_left + wx * (top_right - top_left)
    bottom = bottom_left + wx * (bottom_right - bottom_left)
    return top + wy * (bottom - top)


def gather_corners(flat, index, stride):
    """The four neighbours of every index in a flat (M, C) source, as (C, P) planes.

    Args:
        flat: float32 (M, C), a row-major image of row length ``stride``.
        index: int32 (P,) flat index of each top-left neighbour.
        stride: int, row length.

    Returns:
        list of four float32 (C, P): top-left, top-right, bottom-left,
        bottom-right.
    """
    return [tf.transpose(tf.gather(flat, index + step)) for step in (0, 1, stride, stride + 1)]


# --------------------------------------------------------------------------- #
# Dihedral and intensity
# --------------------------------------------------------------------------- #


def random_dihedral_index(seed):
    """A transform index in 0..7 drawn with the stateless ``seed`` (int32 scalar)."""
    return tf.random.stateless_uniform([], seed=seed, minval=0, maxval=8, dtype=tf.int32)


def blur_radius(blur_sigma):
    """Half-width (int >= 1) of the blur kernel for the largest sigma ``blur_sigma``."""
    return max(1, int(math.ceil(3.0 * blur_sigma)))


def check_blur_fits(config, tile_size):
    """Raise if the blur is on and its reflect padding does not fit the tile.

    ``gaussian_blur`` reflect-pads by the radius, which needs ``radius <
    tile_size``; otherwise TF fails deep inside the ``tf.data`` graph.

    Args:
        config: AugmentConfig.
        tile_size: int T.

    Raises:
        ValueError: naming ``blur_sigma``, the radius and ``tile_size``.
    """
    if config.blur_probability <= 0:
        return
    radius = blur_radius(config.blur_sigma)
    if tile_size <= radius:
        raise ValueError(
            f"blur_sigma={config.blur_sigma!r} needs tile_size > {radius} (blur kernel radius "
            f"ceil(3 * blur_sigma)); received tile_size={tile_size!r}: lower blur_sigma, enlarge "
            "the tiles or set blur_probability=0"
        )


def gaussian_blur(image, sigma, radius):
    """Separable Gaussian blur of a (T, T, 1) image with reflect borders.

    Args:
        image: float32 (T, T, 1).
        sigma: scalar float tensor > 0, in pixels.
        radius: int, kernel half-width (kernel size 2 * radius + 1), < T.

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


def noise_bank(seed, tile_size, extra=255):
    """A fixed (T + extra, T + extra) float32 bank of N(0, 1) draws.

    Drawing fresh normal noise for every 512 x 512 tile costs more than the
    whole elastic warp on a CPU; each tile instead takes a random
    (T, T) crop of this bank (``(extra + 1)**2`` possible offsets), so within
    a tile the noise is i.i.d. Gaussian.

    Args:
        seed: int.
        tile_size: int T.
        extra: int, extra rows and columns.

    Returns:
        float32 tensor (T + extra, T + extra).
    """
    side = tile_size + extra
    return tf.constant(np.random.default_rng([seed, 7]).standard_normal((side, side), np.float32))


def intensity_jitter(image, seed, config, bank=None):
    """Gamma, contrast, brightness, optional blur and noise on a (T, T, 1) image.

    Args:
        image: float32 (T, T, 1) in [0, 1].
        seed: (2,) stateless seed.
        config: AugmentConfig.
        bank: optional float32 (B, B) N(0, 1) noise bank (``noise_bank``) to
            crop the noise from; fresh noise is drawn if None.

    Returns:
        float32 (T, T, 1), clipped to [0, 1].

    Raises:
        ValueError: blur on with ``T <= blur_radius(config.blur_sigma)``.
    """
    size = image.shape[0]
    check_blur_fits(config, size)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform([6], seed=seeds[0])
    if config.gamma > 0:  # x ** g as exp(g log x): several times faster than pow on CPU
        image = tf.exp(tf.math.log(image) * tf.exp((2.0 * u[0] - 1.0) * config.gamma))
    if config.contrast > 0 or config.brightness > 0:
        factor = 1.0 + (2.0 * u[1] - 1.0) * config.contrast
        shift = (2.0 * u[2] - 1.0) * config.brightness
        if config.contrast > 0:
            shift = shift + (1.0 - factor) * tf.reduce_mean(image)
        image = image * factor + shift
    if config.blur_probability > 0:
        sigma = 0.3 + u[4] * max(config.blur_sigma - 0.3, 0.0)
        radius = blur_radius(config.blur_sigma)
        image = tf.cond(u[3] < config.blur_probability,
                        lambda: gaussian_blur(image, sigma, radius), lambda: image)
    if config.noise > 0:
        amplitude = u[5] * config.noise
        if bank is None:
            noise = tf.random.stateless_normal([size, size, 1], seed=seeds[1])
        else:
            extra = bank.shape[0] - size
            offset = tf.random.stateless_uniform([2], seeds[1], 0, extra + 1, dtype=tf.int32)
            noise = tf.slice(bank, offset, [size, size])[..., None]
        image = image + noise * amplitude
    return tf.clip_by_value(image, 0.0, 1.0)
