"""``tf.data`` pipelines of 3D patches with affinity targets (anisotropic EM).

Per training patch of shape (Z, P, P), in this order:

1. a random crop of the (Z, Y, X) raw volume and its instance labels, with
   ``margin`` pixels of in-plane context for the warp;
2. in-plane elastic deformation: one smooth field (the 2D pipeline's cubic
   B-spline field, ``fusionnet_tf.data.augment``) for every section of the
   patch; the image is sampled bilinearly, the labels with NEAREST neighbour
   (ids are never interpolated);
3. one of the 8 in-plane dihedral transforms and a z-flip (image and labels);
4. per-section intensity jitter (gamma, contrast, brightness, noise: the 2D
   ``intensity_jitter``), image only;
5. EM-defect augmentation, image only (labels untouched), as in Lee et al.
   2017 and PyTorch Connectomics, each with its own probability per patch:
   a missing section (constant 0), a misaligned block (every section at and
   after a random z shifted in-plane by a random vector), a low-contrast
   section, a blurred section, a fold / stripe (a dark line across one section);
6. affinity targets and mask computed from the augmented labels
   (``affinity_targets_tf``), so warps and flips are consistent.

Elements are ``(image (Z, P, P, 1) float32, target (Z, P, P, 2C) float32)``:
the target packs the C affinity channels then the C mask channels, the
layout ``fusionnet_tf.training.losses.MaskedAffinityLoss`` expects.
All randomness is stateless, from ``(seed, patch index)``: a resumed run
sees the same patches.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from fusionnet_tf.checks import check_int
from fusionnet_tf.data import augment as aug2d
from fusionnet_tf.data.affinities import DEFAULT_OFFSETS_3D, affinity_targets_tf, check_offsets
from fusionnet_tf.dihedral import dihedral_tf

AUTOTUNE = tf.data.AUTOTUNE
_SEED_SALT = 2013
_NUM_DRAWS = 12  # stateless sub-seeds per patch


@dataclasses.dataclass(frozen=True)
class Augment3DConfig:
    """3D patch augmentation settings; the defaults are the training defaults.

    Attributes:
        elastic, elastic_grid, elastic_displacement: in-plane elastic
            deformation, as ``AugmentConfig`` (one field for all sections).
        dihedral: bool. Random in-plane flip / 90-degree rotation.
        z_flip: bool. Reverse the section order with probability 0.5.
        gamma, contrast, brightness, noise: per-section intensity jitter, as
            ``AugmentConfig``.
        missing_section: probability of one section replaced by 0.
        misalign: probability of a misaligned block: sections at and after a
            random z in [1, Z) shifted by a random in-plane vector of up to
            ``misalign_max_shift`` pixels per axis (reflect borders).
        misalign_max_shift: int >= 1.
        low_contrast: probability of one section with its contrast scaled by
            ``U(0.1, 0.4)`` around its mean.
        blur_section: probability of one section blurred with a Gaussian of
            sigma ``U(1, blur_section_sigma)``.
        blur_section_sigma: float >= 1.
        fold: probability of a fold / stripe: a dark (0) straight line of
            width ``U(1, fold_width)`` pixels at a random angle through one section.
        fold_width: float >= 1.
    """

    elastic: bool = True
    elastic_grid: int = 5
    elastic_displacement: float = 6.0
    dihedral: bool = True
    z_flip: bool = True
    gamma: float = 0.2
    contrast: float = 0.2
    brightness: float = 0.1
    noise: float = 0.03
    missing_section: float = 0.05
    misalign: float = 0.2
    misalign_max_shift: int = 12
    low_contrast: float = 0.05
    blur_section: float = 0.05
    blur_section_sigma: float = 3.0
    fold: float = 0.05
    fold_width: float = 6.0

    def __post_init__(self):
        # the 2D config checks the shared fields
        self.as_2d()
        for name in ("missing_section", "misalign", "low_contrast", "blur_section", "fold"):
            aug2d._check_number(name, getattr(self, name), low=0.0, high=1.0)
        check_int("misalign_max_shift", self.misalign_max_shift, 1)
        aug2d._check_number("blur_section_sigma", self.blur_section_sigma, low=1.0)
        aug2d._check_number("fold_width", self.fold_width, low=1.0)

    def as_2d(self):
        """The ``AugmentConfig`` of the elastic and intensity parts (no 2D dihedral)."""
        return aug2d.AugmentConfig(
            elastic=self.elastic, elastic_grid=self.elastic_grid,
            elastic_displacement=self.elastic_displacement, dihedral=False, gamma=self.gamma,
            contrast=self.contrast, brightness=self.brightness, noise=self.noise)

    @classmethod
    def none(cls):
        """Everything off: exact crops."""
        return cls(elastic=False, dihedral=False, z_flip=False, gamma=0.0, contrast=0.0,
                   brightness=0.0, noise=0.0, missing_section=0.0, misalign=0.0,
                   low_contrast=0.0, blur_section=0.0, fold=0.0)

    @classmethod
    def from_dict(cls, values):
        """Build from a dict; unknown keys raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        return cls(**values)


def as_augment3d_config(augment):
    """None/True: defaults; False: none; a dict or an ``Augment3DConfig``."""
    if augment is None or augment is True:
        return Augment3DConfig()
    if augment is False:
        return Augment3DConfig.none()
    if isinstance(augment, Augment3DConfig):
        return augment
    if isinstance(augment, dict):
        return Augment3DConfig.from_dict(augment)
    raise ValueError("augment must be None, True, False, a dict or an Augment3DConfig; "
                     f"received {type(augment).__name__}")


def check_patch_shape(patch_shape, volume_shape=None, name="patch_shape"):
    """Return (Z, P, P) ints; Y and X must be equal (in-plane rotations) and fit the volume."""
    try:
        shape = tuple(int(s) for s in patch_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or shape[1] != shape[2]:
        raise ValueError(f"`{name}` must be [Z, P, P] positive ints with equal Y and X; "
                         f"received {name}={patch_shape!r}")
    if volume_shape is not None and any(p > v for p, v in zip(shape, volume_shape)):
        raise ValueError(f"`{name}` {list(shape)} is larger than the volume {tuple(volume_shape)}")
    return shape


# ---------------------------------------------------------------- geometry


def _crop(volume, origin, shape):
    return tf.slice(volume, origin, shape)


def elastic_warp(image, labels, coarse, basis, margin):
    """Warp every section of a (Z, S, S) crop with one field; S = P + 2 * margin.

    Args:
        image: float32 (Z, S, S).
        labels: int32 (Z, S, S).
        coarse: float32 (2, g, g) control displacements.
        basis: float32 (P, g) spline basis.
        margin: int context pixels on each side.

    Returns:
        ``(image (Z, P, P) float32 bilinear, labels (Z, P, P) int32 nearest)``.
    """
    depth, side = image.shape[0], image.shape[1]
    size = basis.shape[0]
    ys, xs, _ = aug2d.sampling_coordinates(coarse, basis, float(margin), float(margin))
    ys = tf.reshape(ys, [-1])
    xs = tf.reshape(xs, [-1])
    index, wy, wx = aug2d.bilinear_corners(ys, xs, side)
    flat = tf.transpose(tf.reshape(image, [depth, side * side]))  # (S*S, Z)
    corners = aug2d.gather_corners(flat, index, side)
    warped = aug2d.bilinear_blend(*corners, wy, wx)  # (Z, P*P)
    nearest = tf.cast(tf.round(ys), tf.int32) * side + tf.cast(tf.round(xs), tf.int32)
    flat_labels = tf.transpose(tf.reshape(labels, [depth, side * side]))
    warped_labels = tf.transpose(tf.gather(flat_labels, nearest))
    return (tf.reshape(warped, [depth, size, size]),
            tf.reshape(warped_labels, [depth, size, size]))


def dihedral_3d(volume, k):
    """In-plane dihedral transform ``k`` (``fusionnet_tf.dihedral``) of every section of (Z, P, P)."""
    return dihedral_tf(volume[..., None], k)[..., 0]


# ---------------------------------------------------------------- defects (image only)


def _section_mask(depth, z):
    return tf.equal(tf.range(depth), z)[:, None, None]


def missing_section(image, z):
    """Section ``z`` of a (Z, Y, X) image set to 0."""
    return tf.where(_section_mask(image.shape[0], z), tf.zeros_like(image), image)


def misalign_block(image, z, dy, dx):
    """Sections ``z, z+1, ...`` shifted by (dy, dx) (content moves by +dy, +dx; reflect borders).

    Args:
        image: float32 (Z, Y, X).
        z: int32 scalar, first shifted section.
        dy, dx: int32 scalars, |dy| < Y, |dx| < X.
    """
    depth, height, width = image.shape
    pad = [[0, 0], [height - 1, height - 1], [width - 1, width - 1]]
    padded = tf.pad(image, pad, mode="SYMMETRIC")
    shifted = tf.slice(padded, [0, height - 1 - dy, width - 1 - dx], [depth, height, width])
    below = tf.range(depth) >= z
    return tf.where(below[:, None, None], shifted, image)


def low_contrast_section(image, z, factor):
    """Section ``z``'s contrast scaled by ``factor`` around its mean."""
    section = image[z]
    mean = tf.reduce_mean(section)
    low = mean + (image - mean) * factor
    return tf.where(_section_mask(image.shape[0], z), low, image)


def blur_section(image, z, sigma, radius):
    """Section ``z`` blurred with a Gaussian of ``sigma`` (kernel half-width ``radius``)."""
    blurred = aug2d.gaussian_blur(image[z][..., None], sigma, radius)[..., 0]
    return tf.where(_section_mask(image.shape[0], z), blurred[None], image)


def fold_section(image, z, center_y, center_x, angle, width):
    """A dark (0) line of ``width`` pixels through (center_y, center_x) at ``angle`` on section ``z``."""
    _, height, cols = image.shape
    y = tf.range(height, dtype=tf.float32)[:, None] - center_y
    x = tf.range(cols, dtype=tf.float32)[None, :] - center_x
    distance = tf.abs(y * tf.cos(angle) - x * tf.sin(angle))
    line = tf.logical_and(_section_mask(image.shape[0], z), (distance < 0.5 * width)[None])
    return tf.where(line, tf.zeros_like(image), image)


def em_defects(image, seed, config):
    """Apply each EM defect of ``config`` with its probability; image (Z, P, P) float32 only."""
    depth, size = image.shape[0], image.shape[1]
    u = tf.random.stateless_uniform([16], seed=seed)
    zs = tf.random.stateless_uniform([5], seed=seed + 1, minval=0, maxval=depth, dtype=tf.int32)
    if config.missing_section > 0:
        image = tf.cond(u[0] < config.missing_section,
                        lambda: missing_section(image, zs[0]), lambda: image)
    if config.misalign > 0 and depth > 1:
        shift = config.misalign_max_shift
        z = 1 + zs[1] % (depth - 1)
        d = tf.random.stateless_uniform([2], seed=seed + 2, minval=-shift, maxval=shift + 1,
                                        dtype=tf.int32)
        d = tf.clip_by_value(d, 1 - size, size - 1)
        image = tf.cond(u[1] < config.misalign,
                        lambda: misalign_block(image, z, d[0], d[1]), lambda: image)
    if config.low_contrast > 0:
        factor = 0.1 + 0.3 * u[2]
        image = tf.cond(u[3] < config.low_contrast,
                        lambda: low_contrast_section(image, zs[2], factor), lambda: image)
    if config.blur_section > 0:
        radius = min(aug2d.blur_radius(config.blur_section_sigma), size - 1)
        sigma = 1.0 + u[4] * (config.blur_section_sigma - 1.0)
        image = tf.cond(u[5] < config.blur_section,
                        lambda: blur_section(image, zs[3], sigma, radius), lambda: image)
    if config.fold > 0:
        width = 1.0 + u[6] * (config.fold_width - 1.0)
        image = tf.cond(u[7] < config.fold,
                        lambda: fold_section(image, zs[4], u[8] * size, u[9] * size,
                                             u[10] * math.pi, width), lambda: image)
    return image


# ---------------------------------------------------------------- patches


def _intensity(image, seed, config2d):
    if not config2d.intensity_active:
        return image
    seeds = tf.random.experimental.stateless_split(seed, image.shape[0])
    sections = [aug2d.intensity_jitter(image[z][..., None], seeds[z], config2d)[..., 0]
                for z in range(image.shape[0])]
    return tf.stack(sections)


def augment_patch(image, labels, seed, config, patch_shape):
    """Augment one cropped patch (with context) as the module docstring says.

    Args:
        image: float32 (Z, P + 2m, P + 2m), m = ``config.as_2d().margin``.
        labels: int32 (Z, P + 2m, P + 2m) instance ids.
        seed: (2,) int stateless seed.
        config: Augment3DConfig.
        patch_shape: (Z, P, P).

    Returns:
        ``(image (Z, P, P) float32 in [0, 1], labels (Z, P, P) int32)``.
    """
    config2d = config.as_2d()
    margin = config2d.margin
    depth, size, _ = patch_shape
    seeds = tf.random.experimental.stateless_split(seed, _NUM_DRAWS)
    if config2d.elastic_active:
        coarse = aug2d.coarse_displacements(seeds[0], config.elastic_grid,
                                            config.elastic_displacement, config2d.elastic_limit)
        basis = tf.constant(aug2d.spline_basis(size, config.elastic_grid))
        image, labels = elastic_warp(image, labels, coarse, basis, margin)
    if config.dihedral:
        k = aug2d.random_dihedral_index(seeds[1])
        image, labels = dihedral_3d(image, k), dihedral_3d(labels, k)
    if config.z_flip:
        flip = tf.random.stateless_uniform([], seed=seeds[2]) < 0.5
        image = tf.where(flip, tf.reverse(image, [0]), image)
        labels = tf.where(flip, tf.reverse(labels, [0]), labels)
    image = tf.ensure_shape(image, patch_shape)
    labels = tf.ensure_shape(labels, patch_shape)
    image = _intensity(image, seeds[3], config2d)
    image = em_defects(image, seeds[4], config)
    return image, labels


def pack_targets(labels, offsets):
    """(Z, Y, X) int labels -> (Z, Y, X, 2C) float32: affinities then mask."""
    affs, mask = affinity_targets_tf(labels, offsets)
    return tf.concat([affs, mask], axis=-1)


def _check_volumes(images, labels, patch_shape, margin=0):
    if images.ndim != 3 or images.shape != labels.shape:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must be (Z, Y, X) "
                         "volumes of the same shape")
    if np.dtype(labels.dtype).kind not in "ui":
        raise ValueError(f"labels must hold integer instance ids; received dtype {labels.dtype}")
    if labels.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError("labels hold ids above 2**31 - 1; relabel them (e.g. "
                         "skimage.segmentation.relabel_sequential)")
    patch_shape = check_patch_shape(patch_shape, images.shape)
    if patch_shape[1] + 2 * margin > min(images.shape[1:]):
        raise ValueError(f"patch side {patch_shape[1]} plus twice the elastic margin {margin} "
                         f"exceeds the volume's Y/X {images.shape[1:]}")
    return patch_shape


def train_dataset_3d(images, labels, patch_shape, batch_size, offsets=DEFAULT_OFFSETS_3D,
                     augment=None, seed=0, start_batch=0, with_labels=False):
    """Endless batches of augmented 3D patches with packed affinity targets.

    Args:
        images: float32 (Z, Y, X) normalized to [0, 1].
        labels: integer (Z, Y, X) instance ids (0 = boundary).
        patch_shape: (Z, P, P).
        batch_size: int.
        offsets: affinity offsets (C of them).
        augment: see ``as_augment3d_config``.
        seed: int.
        start_batch: int. First batch (resume: the same stream as skipping).
        with_labels: bool. Also yield the augmented int32 labels (B, Z, P, P)
            (for inspection and tests).

    Returns:
        ``tf.data.Dataset`` of ((B, Z, P, P, 1), (B, Z, P, P, 2C)) float32
        (plus the labels with ``with_labels``).
    """
    config = as_augment3d_config(augment)
    offsets = check_offsets(offsets)
    margin = config.as_2d().margin
    patch_shape = _check_volumes(images, labels, patch_shape, margin)
    depth, size, _ = patch_shape
    side = size + 2 * margin
    volume = tf.constant(np.asarray(images, np.float32))
    ids = tf.constant(np.asarray(labels).astype(np.int32))
    limits = np.array([images.shape[0] - depth + 1, images.shape[1] - side + 1,
                       images.shape[2] - side + 1], np.int32)

    def make(index):
        seed_pair = tf.cast(tf.stack([tf.constant(seed, tf.int64), index + _SEED_SALT]), tf.int32)
        draws = tf.random.experimental.stateless_split(seed_pair, 2)
        unit = tf.random.stateless_uniform([3], seed=draws[0])
        origin = tf.cast(unit * limits.astype(np.float32), tf.int32)
        origin = tf.minimum(origin, limits - 1)
        crop_shape = [depth, side, side]
        image = _crop(volume, origin, crop_shape)
        crop_labels = _crop(ids, origin, crop_shape)
        image, crop_labels = augment_patch(image, crop_labels, draws[1], config, patch_shape)
        if with_labels:
            return image[..., None], pack_targets(crop_labels, offsets), crop_labels
        return image[..., None], pack_targets(crop_labels, offsets)

    ds = tf.data.Dataset.counter(start_batch * batch_size).map(
        make, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def validation_origins(volume_shape, patch_shape, seed=0):
    """Patch origins tiling the volume (last patch flush with the end), in a fixed shuffled order."""
    axes = []
    for n, p in zip(volume_shape, patch_shape):
        starts = list(range(0, n - p + 1, p))
        if starts[-1] != n - p:
            starts.append(n - p)
        axes.append(starts)
    origins = np.array([(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]], np.int64)
    return origins[np.random.default_rng(seed).permutation(len(origins))]


def validation_dataset_3d(images, labels, patch_shape, batch_size, offsets=DEFAULT_OFFSETS_3D):
    """Finite dataset of non-augmented patches tiling the volume (fixed shuffled order).

    Returns:
        ``tf.data.Dataset`` of ((B, Z, P, P, 1), (B, Z, P, P, 2C)) float32
        (the last batch may be smaller).
    """
    offsets = check_offsets(offsets)
    patch_shape = _check_volumes(images, labels, patch_shape)
    volume = tf.constant(np.asarray(images, np.float32))
    ids = tf.constant(np.asarray(labels).astype(np.int32))
    origins = validation_origins(images.shape, patch_shape)

    def make(origin):
        origin = tf.cast(origin, tf.int32)
        image = tf.ensure_shape(_crop(volume, origin, patch_shape), patch_shape)
        crop_labels = tf.ensure_shape(_crop(ids, origin, patch_shape), patch_shape)
        return image[..., None], pack_targets(crop_labels, offsets)

    ds = tf.data.Dataset.from_tensor_slices(origins).map(make, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(1)
