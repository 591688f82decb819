"""Predict, write and mark one block; the per-process Predictor cache.

``process_block`` is the task every Dask worker (or the local loop) runs. It
opens the input lazily, reads the block plus its halo, normalizes it with the
per-slice ranges computed once for the whole volume, predicts exactly the
global tiles that overlap the block with ``Predictor.predict_tiles``, blends
them with ``Predictor.blend_weights`` inside the block only, writes the block
(one zarr chunk) and then its done-marker.
"""

import dataclasses
import functools
import os
import time

import numpy as np

from fusionnet_tf.data.readers import close_stack
from fusionnet_tf.predict_options import PredictOptions
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.executors import worker_name
from fusionnet_tf.volumes.geometry import tiles_for_block, tiles_region

# most tiles sent to one predict_tiles call (bounds memory for deep blocks)
MAX_TILES_PER_CALL = 64


@dataclasses.dataclass(frozen=True)
class PredictorSpec:
    """Everything a worker needs to build its Predictor (hashable, picklable).

    Attributes:
        model: str path of a ``.keras`` file or SavedModel folder.
        options: ``PredictOptions`` of the Predictor (the volume runner
            gives an explicit engine and precision, so workers never time).
        tf_threads: TensorFlow intra-op threads for the worker process, set
            before the model loads; 0 leaves TensorFlow's default.
        offsets: the offsets of a 3D affinity model, or None.
    """

    model: str
    options: PredictOptions = PredictOptions()
    tf_threads: int = 0
    offsets: tuple = None  # 3D affinity models: ((dz, dy, dx), ...)


@dataclasses.dataclass(frozen=True)
class VolumeJob:
    """What every block task shares: input, output and predictor settings.

    Attributes:
        input_spec: str, ``volume.zarr[:/key]`` or ``volume.h5:/key``.
        output_path: str, the output zarr store.
        predictor: ``PredictorSpec``, or None when the caller passes a live
            Predictor to ``process_block`` (in-process runs only).
        normalization: the normalization mode, for the record.
    """

    input_spec: str
    output_path: str
    predictor: PredictorSpec = None
    normalization: str = "slice"


# the per-process cache of worker_predictor keeps the Predictors of this many specs (the
# least recently used goes first): a worker loads a model once per job, and a long-lived
# process that runs many jobs does not keep every model it ever loaded
MAX_CACHED_PREDICTORS = 2
_LOADS = {"count": 0}  # models loaded by this process, for the summary


def _set_tf_threads(threads):
    """Limit TensorFlow to ``threads`` intra-op threads (before TF runs anything)."""
    if not threads:
        return
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    except RuntimeError:  # the TF context already exists in this process
        pass


@functools.lru_cache(maxsize=MAX_CACHED_PREDICTORS)
def worker_predictor(spec):
    """The Predictor for ``spec``, loaded once per process and cached.

    The cache holds the last ``MAX_CACHED_PREDICTORS`` specs
    (``worker_predictor.cache_info()``, ``worker_predictor.cache_clear()``).

    Args:
        spec: ``PredictorSpec``.

    Returns:
        ``fusionnet_tf.inference.Predictor`` (progress bar off).
    """
    _set_tf_threads(spec.tf_threads)
    from fusionnet_tf.inference import Predictor, load_model

    model = load_model(spec.model)
    predictor = Predictor(model, spec.options, progress=False, offsets=spec.offsets)
    _LOADS["count"] += 1
    return predictor


def predictor_loads():
    """How many models this process has loaded (for tests and the summary)."""
    return _LOADS["count"]


def tile_size(predictor):
    """Side T of the Predictor's square tiles, from its blend weights."""
    return int(np.asarray(predictor.blend_weights).shape[0])


def pad_widths(height, width, tile):
    """``((before_y, after_y), (before_x, after_x))`` of the Predictor's padding.

    Like ``fusionnet_tf.inference.tiling.pad_to_tile``: slices smaller than a
    tile are padded at the bottom/right only, up to the tile size.
    """
    from fusionnet_tf.inference.tiling import padded_shape

    padded_h, padded_w = padded_shape(height, width, tile)
    return (0, padded_h - height), (0, padded_w - width)


def _pad_mode(height, width):
    # same rule as tiling.pad_to_tile, decided on the whole slice
    return "reflect" if min(height, width) > 1 else "edge"


def read_region(volume, z_range, y_range, x_range, pads):
    """Read a region given in padded coordinates, reflect-padding like the Predictor.

    Along an axis that the Predictor pads (slice shorter than a tile) the whole
    axis is read and padded; otherwise only the region is read.

    Args:
        volume: lazy ``(Z, Y, X)`` array.
        z_range: ``(z0, z1)``.
        y_range, x_range: ``(start, stop)`` in padded coordinates.
        pads: ``pad_widths`` of the slices.

    Returns:
        ``(z1 - z0, y1 - y0, x1 - x0)`` array of the volume's dtype.
    """
    _, height, width = volume.shape
    selection = [slice(*z_range)]
    local = []
    for (start, stop), (before, after) in zip((y_range, x_range), pads):
        if before or after:
            selection.append(slice(None))
            local.append(slice(start, stop))
        else:
            selection.append(slice(start, stop))
            local.append(slice(None))
    raw = np.asarray(volume[tuple(selection)])
    if any(b or a for b, a in pads):
        raw = np.pad(raw, ((0, 0),) + tuple(pads), mode=_pad_mode(height, width))
    return raw[(slice(None),) + tuple(local)]


def normalize_region(raw, lo, hi):
    """Normalize ``raw`` (n, h, w) with per-slice ``lo``/``hi`` (n,) like the whole slices.

    Uses ``fusionnet_tf.data.normalize`` with explicit ranges, so a block of a
    slice is normalized exactly like the whole slice.

    Returns:
        float32 (n, h, w).
    """
    from fusionnet_tf.data.normalize import normalize

    return normalize(raw, mode="slice", lo=np.asarray(lo, np.float32),
                     hi=np.asarray(hi, np.float32))


def predict_block(volume, block, predictor, lo, hi):
    """Membrane probability of one block, identical to whole-slice prediction.

    Args:
        volume: lazy ``(Z, Y, X)`` array (native dtype).
        block: ``geometry.Block``.
        predictor: object with ``tile_origins``, ``predict_tiles``,
            ``blend_weights`` and optionally ``inputs_per_call``
            (``fusionnet_tf.inference.Predictor``; network calls get as many
            inputs as whole-slice prediction gives them).
        lo, hi: per-slice intensity ranges for the block's slices, (depth,) float.

    Returns:
        ``(prediction, stats)``: float32 array of ``block.shape``, and a dict
        with ``halo`` ((y, x): how far the input region read reached past the
        block, padded coordinates), ``tiles`` (tile predictions made) and
        ``tiles_share`` (the block's area share of whole-slice prediction's
        tiles; ``tiles / tiles_share`` > 1 measures tiles recomputed because
        they straddle block borders).
    """
    _, height, width = volume.shape
    tile = tile_size(predictor)
    pads = pad_widths(height, width, tile)
    before = (pads[0][0], pads[1][0])
    origins = predictor.tile_origins(height, width)
    tiles = tiles_for_block(origins, tile, block.y, block.x, before)
    (ry0, ry1), (rx0, rx1) = tiles_region(tiles, tile)
    region = normalize_region(read_region(volume, block.z, (ry0, ry1), (rx0, rx1), pads), lo, hi)

    depth, block_h, block_w = block.shape
    y0, x0 = block.y[0] + before[0], block.x[0] + before[1]
    weights = np.asarray(predictor.blend_weights, np.float32)
    weight_sum = np.zeros((block_h, block_w), np.float32)
    total = np.zeros(block.shape, np.float32)
    placements = [_placement(oy, ox, tile, y0, x0, block_h, block_w) for oy, ox in tiles]
    for dst, src in placements:
        weight_sum[dst] += weights[src]

    per_call = max(1, MAX_TILES_PER_CALL // len(tiles))
    sizing = getattr(predictor, "inputs_per_call", None)
    call_inputs = {} if sizing is None else {"inputs_per_call": sizing(height, width)}
    for z_start in range(0, depth, per_call):
        zs = range(z_start, min(depth, z_start + per_call))
        batch = np.stack([region[z, oy - ry0:oy - ry0 + tile, ox - rx0:ox - rx0 + tile]
                          for z in zs for oy, ox in tiles]).astype(np.float32, copy=False)
        predictions = predictor.predict_tiles(batch, **call_inputs)
        for i, z in enumerate(zs):
            for j, (dst, src) in enumerate(placements):
                total[z][dst] += weights[src] * predictions[i * len(tiles) + j][src]
    stats = {
        "halo": (max(y0 - ry0, ry1 - y0 - block_h), max(x0 - rx0, rx1 - x0 - block_w)),
        "tiles": len(tiles) * depth,
        "tiles_share": len(origins) * depth * block_h * block_w / (height * width),
    }
    return total / weight_sum, stats


def _placement(oy, ox, tile, y0, x0, block_h, block_w):
    """(block slice, tile slice) of the overlap of a tile with the block."""
    ty0, ty1 = max(oy, y0), min(oy + tile, y0 + block_h)
    tx0, tx1 = max(ox, x0), min(ox + tile, x0 + block_w)
    dst = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
    src = (slice(ty0 - oy, ty1 - oy), slice(tx0 - ox, tx1 - ox))
    return dst, src


def block_range(volume, block):
    """Per-slice (min, max) of the block's voxels: two float64 arrays (depth,)."""
    raw = np.asarray(volume[slice(*block.z), slice(*block.y), slice(*block.x)])
    return raw.min(axis=(1, 2)).astype(np.float64), raw.max(axis=(1, 2)).astype(np.float64)


def range_task(input_spec, block):
    """Dask task: open the input and return ``(block, lo, hi)`` of ``block_range``."""
    volume, _ = storage.open_volume(input_spec)
    try:
        lo, hi = block_range(volume, block)
    finally:
        close_stack(volume)
    return block, lo, hi


def process_block(job, block, lo, hi, predictor=None, hook=None):
    """Predict ``block``, write it into the output store, then mark it done.

    Args:
        job: ``VolumeJob``.
        block: ``geometry.Block``.
        lo, hi: per-slice intensity ranges of the block's slices, (depth,) float.
        predictor: a live Predictor (in-process runs); None loads (once per
            process) the one described by ``job.predictor``.
        hook: optional callable ``hook(block)`` run after prediction and before
            writing; tests use it to inject faults.

    Returns:
        dict with ``index``, ``worker``, ``pid``, ``seconds``, ``voxels``,
        ``skipped`` (True if a done-marker already existed), ``loads`` (models
        loaded by this process so far) and the ``predict_block`` stats (``halo``,
        ``tiles``, ``tiles_share``).
    """
    start = time.perf_counter()
    info = {"index": block.index, "worker": worker_name(), "pid": os.getpid(),
            "voxels": block.size, "skipped": False}
    if storage.is_done(job.output_path, block):
        return {**info, "skipped": True, "seconds": 0.0, "loads": predictor_loads()}
    if predictor is None:
        predictor = worker_predictor(job.predictor)
    volume, _ = storage.open_volume(job.input_spec)
    try:
        if getattr(predictor, "spatial_dims", 2) == 3:  # lo, hi: the whole volume's bounds
            from fusionnet_tf.volumes.affinities import predict_block_3d

            result, stats = predict_block_3d(volume, block, predictor, lo, hi)
        else:
            result, stats = predict_block(volume, block, predictor, lo, hi)
    finally:
        close_stack(volume)
    if hook is not None:
        hook(block)
    storage.write_block(job.output_path, block, result)
    info.update(seconds=time.perf_counter() - start, loads=predictor_loads(), **stats)
    storage.mark_done(job.output_path, block, {"worker": info["worker"],
                                                "seconds": round(info["seconds"], 3)})
    return info
