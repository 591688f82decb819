"""``tf.data`` pipelines: endless augmented training tiles, fixed validation tiles.

Training (``train_dataset``): an endless counter is mapped, in parallel, to
tiles. Tile ``i`` takes its randomness only from ``(seed, i)`` (stateless RNG),
so runs are reproducible whatever the thread scheduling, and every tile gets
its own slice, position, deformation field and jitter:

    counter -> seed_i -> [sampler] slice n, origin (y, x)
            -> window: image + label cut from the reflect-padded slice, with a
               margin for the elastic warp, normalized to [0, 1]
            -> elastic warp + dihedral (one gather per pixel), intensity jitter
            -> batch -> prefetch

Tiles larger than the image (e.g. 640 on 512 x 512 ISBI slices, as in the
FusionNet paper) are filled by reflection. Volumes can be NumPy arrays
(normalized and reflect-padded once and held in memory as one float32
tensor: 8 bytes per voxel, 32 with the elastic warp's neighbour layout up to
``QUAD_MEMORY_LIMIT``) or lazy array-likes
(``h5py.Dataset``, ``np.memmap``, ``LazyStack``), read window by window.

Validation (``validation_dataset``): a finite, deterministic set of tiles that
covers every validation slice, with no augmentation.
"""

import numpy as np
import tensorflow as tf

from fusionnet_tf.checks import check_int
from fusionnet_tf.data import augment as aug
from fusionnet_tf.data.augment import as_augment_config
from fusionnet_tf.data.normalize import check_mode, intensity_range, normalize
from fusionnet_tf.dihedral import dihedral_tf
from fusionnet_tf.data.readers import check_stack

AUTOTUNE = tf.data.AUTOTUNE
_SEED_SALT = 2012  # second word of the base seed; any constant works


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #


def _label_values(labels):
    """The distinct values of a label stack, and the slice they were collected up to.

    A plain in-memory array is checked at once. Lazy stacks (h5py, memmap,
    ``LazyStack``) are read slice by slice: one full pass over the labels
    before any training, with one slice in memory at a time (for 30 ISBI
    slices of uint8 labels, 7.5 MB read); the pass stops at the first slice
    with a value outside {0, 1}.

    Args:
        labels: (N, H, W) array-like.

    Returns:
        ``(values, last)``: sorted 1-D NumPy array of the values seen and the
        index of the last slice read (None for in-memory arrays).
    """
    if type(labels) is np.ndarray:
        return np.unique(labels), None
    values = np.zeros(0, np.dtype(labels.dtype))
    for i in range(labels.shape[0]):
        values = np.union1d(values, np.unique(np.asarray(labels[i])))
        if not np.isin(values, (0, 1)).all():
            return values, i
    return values, labels.shape[0] - 1


def _check_binary_labels(labels):
    """Raise ValueError unless every label value is 0 or 1 (lazy stacks included)."""
    values, last = _label_values(labels)
    if np.isin(values, (0, 1)).all():
        return
    shown = ", ".join(str(v) for v in values[:10])
    where = "" if last is None else f" (in slices 0-{last} of the lazy label stack)"
    raise ValueError(
        f"labels must be membrane maps with values in {{0, 1}} (1 = membrane); found values "
        f"[{shown}]{where}; convert them with read_labels(..., convention=...) or to_membrane()"
    )


def _check_volumes(images, labels):
    """Validate image and label stacks; return them as (N, H, W) array-likes.

    Labels must hold only 0 and 1; lazy label stacks are checked with one
    slice-by-slice read (``_label_values``).
    """
    images = check_stack(images, "images")
    if labels is None:
        raise ValueError("labels must be given; received None")
    labels = check_stack(labels, "labels", allow_bool=True)
    if tuple(images.shape) != tuple(labels.shape):
        raise ValueError(
            f"image/label shape mismatch: images have shape {tuple(images.shape)}, "
            f"labels have shape {tuple(labels.shape)}"
        )
    _, height, width = images.shape
    if height < 2 or width < 2:
        raise ValueError(f"slices must be at least 2 x 2 pixels; received shape {tuple(images.shape)}")
    _check_binary_labels(labels)
    return images, labels


def _normalization_range(images, normalization):
    """Per-slice (lo, hi) float32 arrays for the chosen normalization."""
    if normalization is None:
        if np.dtype(images.dtype).kind != "f":
            raise ValueError(
                f"normalization=None needs float images already in [0, 1]; received dtype {images.dtype}"
            )
        n = images.shape[0]
        return np.zeros(n, np.float32), np.ones(n, np.float32)
    check_mode(normalization)
    return intensity_range(images, normalization)


# --------------------------------------------------------------------------- #
# Sources: normalized image + binary label, reflect-padded, as (.., 2) float32
# --------------------------------------------------------------------------- #


def reflect_index(index, size):
    """Map integer coordinates into [0, size) by mirror reflection (no edge repeat).

    Args:
        index: integer NumPy array of any shape.
        size: Python int >= 1, the axis length.

    Returns:
        Array of the same shape: ``-1 -> 1``, ``size -> size - 2``.
    """
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def _reflect_pad(array, pad_y, pad_x):
    """Reflect-pad axes 1 and 2 of (N, H, W, ...) by (before, after) amounts, any size."""
    _, height, width = array.shape[:3]
    rows = reflect_index(np.arange(-pad_y[0], height + pad_y[1]), height)
    cols = reflect_index(np.arange(-pad_x[0], width + pad_x[1]), width)
    return array[:, rows][:, :, cols]


class _InMemorySource:
    """NumPy stacks held as one padded float32 tensor [image, label] per voxel.

    The stack is normalized and reflect-padded once, by ``margin`` plus the
    excess of the tile over the slice, so a window is a plain slice. With
    ``quad=True`` each voxel also stores its right, lower and lower-right
    neighbours, (N, Hp, Wp, 4, 2) float32 (32 bytes per voxel, corner-major):
    the bilinear warp then needs one gather per pixel instead of four.
    """

    def __init__(self, images, labels, lo, hi, tile_size, margin, quad):
        self.num_slices, self.height, self.width = (int(s) for s in images.shape)
        self.pad_y = margin + max(0, tile_size - self.height)
        self.pad_x = margin + max(0, tile_size - self.width)
        self.quad = quad
        planes = np.stack([normalize(images, lo=lo, hi=hi), labels.astype(np.float32)], axis=-1)
        planes = _reflect_pad(planes, (self.pad_y, self.pad_y + 1), (self.pad_x, self.pad_x + 1))
        if quad:
            planes = np.stack([planes[:, :-1, :-1], planes[:, :-1, 1:], planes[:, 1:, :-1],
                               planes[:, 1:, 1:]], axis=-2)
        else:
            planes = planes[:, :-1, :-1]
        self.padded_height, self.padded_width = planes.shape[1:3]
        if planes.shape[0] * self.padded_height * self.padded_width >= 2**31:
            raise ValueError(
                f"stack of shape {(self.num_slices, self.height, self.width)} is too large to hold in "
                "memory for tiling; pass a lazy array (open_stack) instead"
            )
        self._volume = tf.constant(planes)
        self._flat = tf.reshape(self._volume, [-1, 8 if quad else 2])

    def window(self, n, y, x, side):
        """(side, side, 2) window of slice n at (y, x) (slice coordinates, may be negative)."""
        y = y + self.pad_y
        x = x + self.pad_x
        if self.quad:
            return self._volume[n, y:y + side, x:x + side, 0]
        return self._volume[n, y:y + side, x:x + side]

    def flat_source(self, n, y, x, margin, size):
        """Where the warp samples from for the tile at (y, x) of slice n.

        Returns:
            ``(flat, offset, stride, quad)``: the flattened padded stack
            ((M, 8) with ``quad``, else (M, 2)), the flat index of the
            top-left corner of the tile's window (``margin`` of context), the
            row stride and the layout flag. No data is copied.
        """
        del size
        top = y + self.pad_y - margin
        left = x + self.pad_x - margin
        offset = (n * self.padded_height + top) * self.padded_width + left
        return self._flat, offset, self.padded_width, self.quad


class _LazySource:
    """Lazy stacks (h5py, memmap, LazyStack): each window is read with NumPy.

    Labels are taken as ``label != 0``; ``_check_volumes`` has already
    checked that they hold only 0 and 1.
    """

    def __init__(self, images, labels, lo, hi):
        self.num_slices, self.height, self.width = (int(s) for s in images.shape)
        self._images, self._labels = images, labels
        self._lo, self._hi = lo, hi

    def _read(self, n, y, x, side):
        """Read the bounding block once, reflect in NumPy, normalize like ``normalize``."""
        n = int(n)
        rows = reflect_index(np.arange(y, y + side), self.height)
        cols = reflect_index(np.arange(x, x + side), self.width)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        image = np.asarray(self._images[n, r0:r1, c0:c1])[rows - r0][:, cols - c0]
        label = np.asarray(self._labels[n, r0:r1, c0:c1])[rows - r0][:, cols - c0]
        image = normalize(image, lo=self._lo[n], hi=self._hi[n])
        return np.stack([image, (label != 0).astype(np.float32)], axis=-1)

    def window(self, n, y, x, side):
        """(side, side, 2) window of slice n at (y, x) (slice coordinates, may be negative)."""
        window = tf.numpy_function(self._read, [n, y, x, tf.constant(side)], tf.float32, stateful=False)
        return tf.ensure_shape(window, [side, side, 2])

    def flat_source(self, n, y, x, margin, size):
        """As ``_InMemorySource.flat_source``: reads the window (with context) first."""
        side = size + 2 * margin
        flat = tf.reshape(self.window(n, y - margin, x - margin, side), [side * side, 2])
        return flat, tf.constant(0), side, False


def _warp(flat, offset, stride, quad, coarse, basis, k, margin):
    """Deformed [image, label] planes, (2, T, T) float32, sampled bilinearly from a flat source.

    Coordinates are computed in the frame of the tile's window (``margin`` of
    context), identically for in-memory and lazy sources, and the window's
    flat position ``offset`` is added to the index. The work is done on
    (2, T * T) planes: one gather of (T * T, 8) neighbour rows (``quad``) or
    four of (T * T, 2), a transpose to planes, then three lerps. Interleaved
    (.., 2, 4) layouts cost several times more on a CPU (stacking weights,
    broadcasting and reducing over a size-4 axis are slow paths in TF).
    """
    size = basis.shape[0]
    ys, xs, transpose = aug.sampling_coordinates(coarse, basis, float(margin), float(margin), k)
    index, wy, wx = aug.bilinear_corners(ys, xs, stride, offset)
    index = tf.reshape(index, [-1])
    if quad:
        rows = tf.transpose(tf.gather(flat, index))  # (8, T * T), rows = corner-major channels
        corners = [rows[2 * c:2 * c + 2] for c in range(4)]
    else:
        corners = aug.gather_corners(flat, index, stride)
    planes = aug.bilinear_blend(*corners, tf.reshape(wy, [-1]), tf.reshape(wx, [-1]))
    planes = tf.reshape(planes, [2, size, size])
    return tf.cond(transpose, lambda: tf.transpose(planes, [0, 2, 1]), lambda: planes)


def _make_source(images, labels, lo, hi, tile_size, margin, quad):
    if isinstance(images, np.ndarray) and isinstance(labels, np.ndarray):
        return _InMemorySource(images, labels, lo, hi, tile_size, margin, quad)
    return _LazySource(images, labels, lo, hi)


# --------------------------------------------------------------------------- #
# Tile sampling
# --------------------------------------------------------------------------- #


def _foreground_table(labels):
    """Summed-area table (N, H + 1, W + 1) of nonzero labels, built slice by slice."""
    n, height, width = labels.shape
    dtype = np.int32 if height * width < 2**31 else np.int64
    table = np.zeros((n, height + 1, width + 1), dtype)
    for i in range(n):
        plane = (np.asarray(labels[i]) != 0).astype(dtype)
        table[i, 1:, 1:] = plane.cumsum(0).cumsum(1)
    return table


class _TileSampler:
    """Draws (slice, y, x) tile origins; optionally rejects low-foreground tiles.

    Origins are uniform over all positions where the tile fits; for a tile
    larger than the slice they range over the positions where the slice fits
    inside the tile (the rest is filled by reflection).

    With ``min_foreground > 0``, ``attempts`` candidates are drawn at once and
    the first whose foreground (label 1) fraction, measured on the undeformed
    tile area inside the slice, reaches ``min_foreground`` is used; if none
    does, the candidate with the largest fraction is used.
    """

    def __init__(self, labels, tile_size, min_foreground, attempts):
        self.num_slices, height, width = (int(s) for s in labels.shape)
        self.height, self.width, self.tile = height, width, tile_size
        self.y_range = (min(0, height - tile_size), max(0, height - tile_size))
        self.x_range = (min(0, width - tile_size), max(0, width - tile_size))
        self.min_foreground = float(min_foreground)
        self.attempts = attempts if min_foreground > 0 else 1
        self.table = tf.constant(_foreground_table(labels)) if min_foreground > 0 else None

    def _fraction(self, n, y, x):
        y0, y1 = tf.clip_by_value(y, 0, self.height), tf.clip_by_value(y + self.tile, 0, self.height)
        x0, x1 = tf.clip_by_value(x, 0, self.width), tf.clip_by_value(x + self.tile, 0, self.width)

        def at(rows, cols):
            return tf.cast(tf.gather_nd(self.table, tf.stack([n, rows, cols], axis=-1)), tf.float32)

        total = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
        return total / tf.cast((y1 - y0) * (x1 - x0), tf.float32)

    def __call__(self, seed):
        """Return int32 scalars (n, y, x) drawn with the stateless ``seed``."""
        seeds = tf.random.experimental.stateless_split(seed, 3)
        k = [self.attempts]
        n = tf.random.stateless_uniform(k, seeds[0], 0, self.num_slices, dtype=tf.int32)
        y = tf.random.stateless_uniform(k, seeds[1], self.y_range[0], self.y_range[1] + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform(k, seeds[2], self.x_range[0], self.x_range[1] + 1, dtype=tf.int32)
        if self.table is None:
            return n[0], y[0], x[0]
        fraction = self._fraction(n, y, x)
        accepted = fraction >= self.min_foreground
        pick = tf.where(tf.reduce_any(accepted),
                        tf.argmax(tf.cast(accepted, tf.int32), output_type=tf.int32),
                        tf.argmax(fraction, output_type=tf.int32))
        return n[pick], y[pick], x[pick]


# --------------------------------------------------------------------------- #
# Public datasets
# --------------------------------------------------------------------------- #


QUAD_MEMORY_LIMIT = 2**31  # bytes; larger in-memory stacks use the 4-gather layout


class _TileMaker:
    """Maps a (2,) per-tile seed to one (image, label) training tile.

    Args:
        source: _InMemorySource or _LazySource.
        sampler: _TileSampler.
        config: AugmentConfig.
        tile_size: int T.
        seed: int, for the noise bank.
        deform_fn: optional ``(window (S, S, 2), seed) -> (T, T, 2)`` replacing
            the elastic step (the benchmark plugs Keras's op in here).
    """

    def __init__(self, source, sampler, config, tile_size, seed, deform_fn=None):
        self.source, self.sampler, self.config = source, sampler, config
        self.tile_size = tile_size
        self.margin = config.margin
        self.deform_fn = deform_fn
        if config.elastic_active:
            self.basis = tf.constant(aug.spline_basis(tile_size, config.elastic_grid))
        self.bank = aug.noise_bank(seed, tile_size) if config.noise > 0 else None

    def _finish(self, image, label, seeds):
        if self.config.intensity_active:
            image = aug.intensity_jitter(image, seeds[3], self.config, self.bank)
        size = self.tile_size
        return tf.ensure_shape(image, [size, size, 1]), tf.ensure_shape(label, [size, size, 1])

    def _elastic_tile(self, flat, offset, seeds, stride, quad):
        """Elastic warp with the dihedral folded into the coordinates, then intensity."""
        config = self.config
        k = aug.random_dihedral_index(seeds[1]) if config.dihedral else 0
        coarse = aug.coarse_displacements(seeds[2], config.elastic_grid, config.elastic_displacement,
                                          config.elastic_limit)  # < margin - 1: inside the window
        planes = _warp(flat, offset, stride, quad, coarse, self.basis, k, self.margin)
        image = planes[0][..., None]
        label = tf.cast(planes[1] >= 0.5, tf.float32)[..., None]
        return self._finish(image, label, seeds)

    def _plain_tile(self, tile, seeds):
        """dihedral_tf on an undeformed (or ``deform_fn``-deformed) tile, then intensity."""
        if self.config.dihedral:
            tile = dihedral_tf(tile, aug.random_dihedral_index(seeds[1]))
        tile = tf.ensure_shape(tile, [self.tile_size, self.tile_size, 2])
        return self._finish(tile[..., :1], tile[..., 1:], seeds)

    def __call__(self, tile_seed):
        seeds = tf.random.experimental.stateless_split(tile_seed, 4)
        n, y, x = self.sampler(seeds[0])
        if self.deform_fn is not None:
            side = self.tile_size + 2 * self.margin
            window = self.source.window(n, y - self.margin, x - self.margin, side)
            return self._plain_tile(self.deform_fn(window, seeds[2]), seeds)
        if self.config.elastic_active:
            flat, offset, stride, quad = self.source.flat_source(n, y, x, self.margin, self.tile_size)
            return self._elastic_tile(flat, offset, seeds, stride, quad)
        return self._plain_tile(self.source.window(n, y, x, self.tile_size), seeds)


def _build_train_dataset(images, labels, tile_size, batch_size, augment, seed, normalization,
                         min_foreground, max_sampling_attempts, deform_fn=None, start_batch=0):
    """Shared body of ``train_dataset``; ``deform_fn`` as in ``_TileMaker``."""
    images, labels = _check_volumes(images, labels)
    tile_size = check_int("tile_size", tile_size, 2)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    start_batch = check_int("start_batch", start_batch, 0)
    check_int("max_sampling_attempts", max_sampling_attempts, 1)
    if isinstance(min_foreground, bool) or not isinstance(min_foreground, (int, float)) \
            or not 0.0 <= min_foreground <= 1.0:
        raise ValueError(f"min_foreground must be a number in [0, 1]; received {min_foreground!r}")
    config = as_augment_config(augment)
    aug.check_blur_fits(config, tile_size)
    lo, hi = _normalization_range(images, normalization)
    n, height, width = images.shape
    padded = (n * (height + 2 * config.margin + max(0, tile_size - height))
              * (width + 2 * config.margin + max(0, tile_size - width)))
    quad = config.elastic_active and padded * 32 <= QUAD_MEMORY_LIMIT
    source = _make_source(images, labels, lo, hi, tile_size, config.margin, quad)
    sampler = _TileSampler(labels, tile_size, min_foreground, max_sampling_attempts)
    maker = _TileMaker(source, sampler, config, tile_size, seed, deform_fn)
    base_seed = tf.constant([seed, _SEED_SALT], tf.int64)

    def make_tile(index):
        return maker(tf.random.experimental.stateless_fold_in(base_seed, index))

    dataset = tf.data.Dataset.counter(start=start_batch * batch_size)
    dataset = dataset.map(make_tile, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(AUTOTUNE)


def train_dataset(images, labels, tile_size, batch_size, augment=None, seed=0,
                  normalization="slice", min_foreground=0.0, max_sampling_attempts=16,
                  start_batch=0):
    """Endless, reproducible stream of augmented training tiles.

    Args:
        images: (N, H, W) or (H, W) image stack, any real dtype (uint8,
            uint16, float), as a NumPy array or a lazy array-like from
            ``open_stack`` (read window by window). NumPy stacks are
            normalized and reflect-padded once and kept in memory as float32
            image + label: 32 bytes per voxel with the elastic warp (up to
            ``QUAD_MEMORY_LIMIT`` = 2 GiB, then 8 bytes and a slower warp),
            e.g. 220 MB for 20 ISBI slices; use a lazy array for bigger stacks.
        labels: same shape, membrane maps with values in {0, 1}
            (``read_labels`` output; 1 = membrane), NumPy or lazy. Lazy
            label arrays are checked with one slice-by-slice read before the
            dataset is built (e.g. an ISBI-convention {0, 255} file raises).
        tile_size: int, side T of the square tiles. May exceed H or W: the
            slice is then reflect-padded (e.g. 640 on 512 x 512 slices).
        batch_size: int >= 1.
        augment: None or True (default ``AugmentConfig()``), False (no
            augmentation: exact crops), a dict of ``AugmentConfig`` fields, or
            an ``AugmentConfig``.
        seed: int >= 0. The same seed gives the same tiles. Defaults to 0.
        normalization: ``"slice"`` (default, per-slice min-max),
            ``"global"``, ``"dtype"``, or None for float images already in [0, 1].
        min_foreground: float in [0, 1]. Tiles whose membrane fraction is
            below it are rejected (up to ``max_sampling_attempts`` draws; then
            the best draw is used). Defaults to 0.0 (off).
        max_sampling_attempts: int >= 1. Defaults to 16.
        start_batch: int >= 0. Index of the first batch: the stream equals
            ``train_dataset(...).skip(start_batch)`` without computing the
            skipped tiles (tile i depends only on the seed and i), so a
            resumed run continues in O(1). Defaults to 0.

    Returns:
        Infinite ``tf.data.Dataset`` of ``(image, label)`` batches:
        image (B, T, T, 1) float32 in [0, 1], label (B, T, T, 1) float32 in {0, 1}.

    Raises:
        ValueError: shape mismatch, non-binary labels (lazy ones too), 4-D
            or empty stacks, bad sizes, seeds or augmentation options, or a
            blur whose kernel radius ``ceil(3 * blur_sigma)`` is not smaller
            than ``tile_size``.

    Example:
    >>> x = read_stack("train-volume.tif"); y = read_labels("train-labels.tif")
    >>> ds = train_dataset(x[:20], y[:20], tile_size=256, batch_size=8, seed=1)
    >>> model.fit(ds, steps_per_epoch=100, epochs=10)
    """
    return _build_train_dataset(images, labels, tile_size, batch_size, augment, seed,
                                normalization, min_foreground, max_sampling_attempts,
                                start_batch=start_batch)


def validation_tile_origins(height, width, tile_size):
    """Top-left corners of the fixed validation tiles of one slice.

    Tiles are spaced evenly so that the first starts at 0 and the last ends
    at the border (they overlap when the size is not a multiple of the tile).
    If the slice is smaller than the tile along an axis, one tile is centred
    on it (negative origin; reflection fills the rest).

    Args:
        height, width: slice size.
        tile_size: int T.

    Returns:
        list of (y, x) int tuples, row-major.
    """
    def starts(size):
        if size <= tile_size:
            return [-((tile_size - size) // 2)]
        count = -(-size // tile_size)
        return sorted({int(round(s)) for s in np.linspace(0, size - tile_size, count)})

    return [(y, x) for y in starts(height) for x in starts(width)]


def validation_dataset(images, labels, tile_size, batch_size, normalization="slice"):
    """Finite, deterministic validation tiles covering every slice, no augmentation.

    Args:
        images: (N, H, W) or (H, W) stack (array or lazy array-like).
        labels: same shape, values in {0, 1} (1 = membrane).
        tile_size: int T (may exceed H, W: reflect padding).
        batch_size: int >= 1; the last batch may be smaller.
        normalization: as for ``train_dataset``. Defaults to ``"slice"``.

    Returns:
        ``tf.data.Dataset`` of (image (B, T, T, 1) float32 in [0, 1],
        label (B, T, T, 1) float32 in {0, 1}); slice-major order, tiles at
        ``validation_tile_origins``; known cardinality.

    Raises:
        ValueError: as ``train_dataset``.

    Example:
    >>> val = validation_dataset(x[20:], y[20:], tile_size=256, batch_size=8)
    """
    images, labels = _check_volumes(images, labels)
    tile_size = check_int("tile_size", tile_size, 2)
    batch_size = check_int("batch_size", batch_size, 1)
    lo, hi = _normalization_range(images, normalization)
    source = _make_source(images, labels, lo, hi, tile_size, margin=0, quad=False)
    origins = validation_tile_origins(source.height, source.width, tile_size)
    index = np.array([(n, y, x) for n in range(source.num_slices) for y, x in origins], np.int32)

    def make_tile(n, y, x):
        window = source.window(n, y, x, tile_size)
        return window[..., :1], window[..., 1:]

    dataset = tf.data.Dataset.from_tensor_slices((index[:, 0], index[:, 1], index[:, 2]))
    dataset = dataset.map(make_tile, num_parallel_calls=AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
