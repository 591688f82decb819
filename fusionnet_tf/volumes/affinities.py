"""Block-wise 3D affinity prediction: blocks with halos in z, y and x, on Dask.

For a 3D affinity model the Predictor tiles the whole (Z, Y, X) volume with
3D tiles (``Predictor.tile_origins(Z, Y, X)``: the GLOBAL grid, after padding
at the end of an axis shorter than the tile). A block is computed from exactly
the global tiles that overlap it, read with their halo in z, y and x (at least
one tile minus the step along each axis), predicted with
``Predictor.predict_tiles`` one call at a time as in-memory prediction makes
them, and blended inside the block in the order of the global grid. So every
voxel gets the same tiles, weights and additions as ``Predictor.predict`` of
the whole volume: block borders are invisible. The output is a float32 zarr
array (C, Z, Y, X), chunked (C, block_z, block_y, block_x), with attributes
``kind`` = ``"affinities"`` and ``offsets``, the run's settings under
``"fusionnet_volume"``, done-markers per block and resume, as for membranes.
"""

import time

import numpy as np

from fusionnet_tf.volumes import blockwise, runner, storage
from fusionnet_tf.volumes.executors import BlockFailures, executor_context, is_distributed
from fusionnet_tf.volumes.geometry import block_grid


def _overlaps(origin, tile, block):
    return all(o < stop and o + t > start
               for o, t, (start, stop) in zip(origin, tile, (block.z, block.y, block.x)))


def read_padded_region(volume, region, padded_shape, lo, hi):
    """Normalized input of ``region`` (padded coordinates), padded like ``tiling.pad_to_tile``.

    Along an axis the Predictor pads (shorter than the tile: one tile spans
    it, so the region is the whole padded axis) the whole axis is read and
    padded at its end; elsewhere only the region is read. Each section is
    normalized with its own ``lo``/``hi`` before padding (normalization is per
    section, so this equals padding the normalized volume).

    Args:
        volume: lazy (Z, Y, X) array.
        region: ``((z0, z1), (y0, y1), (x0, x1))`` in padded coordinates.
        padded_shape: the padded volume shape.
        lo, hi: (Z,) per-section normalization bounds of the whole volume.

    Returns:
        float32 array of the region's shape.
    """
    shape = volume.shape
    read = tuple(slice(start, min(stop, n)) for (start, stop), n in zip(region, shape))
    raw = np.asarray(volume[read])
    z = read[0]
    data = blockwise.normalize_region(raw, np.asarray(lo)[z], np.asarray(hi)[z])
    pads = [(0, stop - min(stop, n)) for (_, stop), n in zip(region, shape)]
    if any(after for _, after in pads):
        mode = "reflect" if min(shape) > 1 else "edge"  # tiling.pad_to_tile's rule
        data = np.pad(data, pads, mode=mode)
    return data


def predict_block_3d(volume, block, predictor, lo, hi):
    """(C, depth, height, width) float32 affinities of one block, as whole-volume prediction.

    Args:
        volume: lazy (Z, Y, X) array (native dtype).
        block: ``geometry.Block``.
        predictor: a 3D ``Predictor`` (``spatial_dims == 3``).
        lo, hi: (Z,) per-section normalization bounds of the WHOLE volume
            (the halo reaches beyond the block's sections).

    Returns:
        ``(prediction, stats)``: the block's affinities and a dict with
        ``halo`` ((z, y, x) reach of the input read past the block),
        ``tiles`` (tiles predicted) and ``tiles_share`` (the block's voxel
        share of whole-volume prediction's tiles).
    """
    from fusionnet_tf.inference import tiling

    shape = tuple(int(n) for n in volume.shape)
    tile = predictor.tile_for(shape)
    origins = predictor.tile_origins(*shape)
    tiles = [o for o in origins if _overlaps(o, tile, block)]
    region = tuple((min(o[a] for o in tiles), max(o[a] for o in tiles) + tile[a])
                   for a in range(3))
    data = read_padded_region(volume, region, tiling.padded_shape_nd(shape, tile), lo, hi)
    weights = tiling.blend_weights(tile, predictor.blending)
    ranges = (block.z, block.y, block.x)
    total = weight_sum = None
    chunk = predictor.inputs_per_call()
    for start in range(0, len(tiles), chunk):
        batch = tiles[start:start + chunk]
        inputs = np.stack([data[tuple(slice(o - r0, o - r0 + t) for o, (r0, _), t
                                      in zip(origin, region, tile))] for origin in batch])
        predictions = predictor.predict_tiles(inputs)
        if total is None:
            total = np.zeros(block.shape + predictions.shape[-1:], np.float32)
            weight_sum = np.zeros(block.shape, np.float32)
        for origin, prediction in zip(batch, predictions):
            dst, src = [], []
            for o, t, (b0, b1) in zip(origin, tile, ranges):
                lo_, hi_ = max(o, b0), min(o + t, b1)
                dst.append(slice(lo_ - b0, hi_ - b0))
                src.append(slice(lo_ - o, hi_ - o))
            dst, src = tuple(dst), tuple(src)
            total[dst] += prediction[src] * weights[src][..., None]
            weight_sum[dst] += weights[src]
    stats = {
        "halo": tuple(max(b0 - r0, r1 - b1) for (r0, r1), (b0, b1) in zip(region, ranges)),
        "tiles": len(tiles),
        "tiles_share": len(origins) * block.size / float(np.prod(shape)),
    }
    result = total / weight_sum[..., None]
    return np.ascontiguousarray(np.moveaxis(result, -1, 0)), stats


def spec_for(predictor, model_path, tf_threads):
    """The workers' ``PredictorSpec`` of a 3D Predictor (its settings, explicit engine)."""
    variant = predictor.variant
    options = predictor.options.replace(
        tile_shape=predictor.tile_shape, overlap=predictor.overlap, align=predictor.align,
        precision=variant["precision"],
        engine="plain" if variant["engine"] == "as-is" else variant["engine"])
    return blockwise.PredictorSpec(model=model_path, options=options, tf_threads=tf_threads,
                                   offsets=predictor.offsets)


def settings_of(name, shape, block_shape, model_name, predictor, normalization):
    """JSON settings of a 3D run (lists, so that a resumed run compares equal)."""
    variant = predictor.variant
    return {"input": name, "shape": list(shape), "block": list(block_shape), "model": model_name,
            "normalization": normalization, "kind": "affinities",
            "tile_shape": list(predictor.tile_shape), "overlap": list(predictor.overlap),
            "tta": predictor.tta, "blending": predictor.blending, "align": list(predictor.align),
            "precision": variant["precision"], "engine": variant["engine"],
            "offsets": [list(o) for o in predictor.offsets]}


def predict_affinity_volume(input_spec, output, predictor, model_path, model_name, *,
                            block_shape, normalization, workers, scheduler, tf_threads,
                            zarr_format, overwrite, progress, block_hook):
    """``runner.predict_volume`` for a 3D Predictor (see the module docstring).

    Args:
        predictor: a 3D ``Predictor`` with known ``offsets`` (it runs in-process;
            Dask workers build the same one from ``model_path``).
        model_path: str path of the model (needed with Dask) or None.
        model_name: how the settings name the model.
        Others: as ``runner.predict_volume``.

    Returns:
        The summary dict of ``runner.predict_volume``; ``halo`` is (z, y, x).

    Raises:
        As ``runner.predict_volume``; ValueError if the offsets are unknown.
    """
    if predictor.offsets is None:
        raise ValueError("the offsets of the 3D model are unknown: give offsets (--offsets) or "
                         "write MODEL.offsets.json beside the model")
    distributed_run = is_distributed(workers, scheduler)
    shape, name = runner._input_shape(input_spec, output)
    blocks = block_grid(shape, block_shape)
    input_spec = str(input_spec)
    channels = len(predictor.offsets)
    out_shape, chunks = (channels,) + shape, (channels,) + tuple(block_shape)
    settings = settings_of(name, shape, block_shape, model_name, predictor, normalization)
    spec = spec_for(predictor, model_path, tf_threads) if model_path else None
    job = blockwise.VolumeJob(input_spec=input_spec, output_path=str(output), predictor=spec,
                              normalization=normalization)
    context = executor_context(workers, scheduler)
    array = storage.open_output_for_resume(output, out_shape, chunks, settings, overwrite)
    with context as executor:
        start = time.perf_counter()
        if array is None:
            lo, hi = runner._new_output(output, input_spec, blocks,
                                        ((out_shape), chunks, settings), zarr_format, executor,
                                        progress)
            created = storage.import_zarr().open_array(str(output), mode="r+")
            created.attrs.update({"kind": "affinities", "offsets": settings["offsets"]})
        else:
            lo, hi = runner._stored_intensity_ranges(array)
        todo = [b for b in blocks if not storage.is_done(output, b)]
        items = [(job, b, lo, hi) for b in todo]  # whole-volume bounds: halos cross sections
        live = None if distributed_run else predictor
        summary, failures = runner._run_blocks(executor, runner._block_task(live, block_hook),
                                               items, progress)
        seconds = time.perf_counter() - start
    runner._complete_summary(summary, len(blocks), len(todo), seconds, output, executor.name)
    if failures:
        raise BlockFailures(summary, failures)
    return summary
