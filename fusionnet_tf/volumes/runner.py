"""``predict_volume``: plan the blocks, run them (``volumes.executors``), resume, report."""

import itertools
import os
import time
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice, check_int
from fusionnet_tf.data.normalize import NORMALIZATION_MODES as NORMALIZATIONS  # noqa: F401
from fusionnet_tf.data.readers import close_stack
from fusionnet_tf.io.outputs import check_not_input
from fusionnet_tf.predict_options import PredictOptions
from fusionnet_tf.volumes import blockwise, storage
from fusionnet_tf.volumes.executors import (BlockFailures, blocks_line, check_block_hook,
                                            count_block, executor_context, is_distributed,
                                            progress_bar, run_tasks, speed_line)
from fusionnet_tf.volumes.geometry import block_grid, check_block_shape


# ------------------------------------------------------------------ planning

def _resolve_model(model):
    """``(PredictorSpec model path or None, live predictor or None, description)``."""
    if model is None:
        from fusionnet_tf.pretrained import pretrained_path

        path = pretrained_path()
        return str(path), None, str(path)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        return str(path.resolve()), None, str(path.resolve())
    return None, model, f"<in-memory {type(model).__name__}>"


def _is_predictor(model):
    return hasattr(model, "predict_tiles") and hasattr(model, "tile_origins")


def _live_predictor(model, options):
    """Wrap a keras.Model or callable in a Predictor; pass Predictors through."""
    if _is_predictor(model):
        return model
    from fusionnet_tf.inference import Predictor

    return Predictor(model, options, progress=False)


def _slice_grid(options, height, width):
    """The ``TileGrid`` of one (height, width) slice for a 2D model, checking ``options``.

    The alignment is ``options.align``, else 1 (a Keras model's own input
    multiple is known only once it is loaded; the grid plans the calls).

    Raises:
        ValueError: options a 2D model refuses (a 3D-only ``tta``, a 3D tile,
            an overlap the tile cannot take), naming them.
    """
    from fusionnet_tf.choices import TTA_TRANSFORMS
    from fusionnet_tf.inference.tiling import TileGrid

    check_choice("tta", options.tta, TTA_TRANSFORMS, "for a 2D model")
    (tile, _), (overlap, _) = options.tile(2), options.overlaps(2)
    return TileGrid.of((height, width), tile, overlap,
                       1 if options.align is None else options.align)


def intensity_ranges(volume, blocks, mode, executor, input_spec, progress=False):
    """Per-slice ``(lo, hi)`` float32 arrays (Z,) for ``normalize``, from one pass.

    ``"slice"``: each slice's min and max over the whole slice, combined from
    per-block minima and maxima (computed by the executor's workers);
    ``"global"``: the volume's min and max for every slice; ``"dtype"``: the
    dtype range (no pass over integer data; float data still get the pass,
    which checks finiteness). ``progress`` shows a bar over blocks.

    Raises:
        ValueError: a float volume holds NaN or infinite values (named by
            ``input_spec``, with the block and slice), before any output exists.
    """
    from fusionnet_tf.data.normalize import intensity_range

    depth = volume.shape[0]
    dtype_range = intensity_range(np.zeros((depth, 1, 1), volume.dtype), mode="dtype")
    if mode == "dtype" and np.dtype(volume.dtype).kind not in "fc":
        return dtype_range
    lo = np.full(depth, np.inf)
    hi = np.full(depth, -np.inf)
    tasks = [(input_spec, b) for b in blocks]
    with progress_bar(len(tasks), progress, "intensity ranges") as bar:
        for _, result, exc in executor.map_unordered(blockwise.range_task, tasks):
            if exc is not None:
                raise exc
            block, block_lo, block_hi = result
            check_block_finite(block, block_lo, block_hi, input_spec)
            z = slice(*block.z)
            lo[z] = np.minimum(lo[z], block_lo)
            hi[z] = np.maximum(hi[z], block_hi)
            bar.update(1)
    if mode == "dtype":  # the pass only checked that the float data are finite
        return dtype_range
    if mode == "global":
        lo[:], hi[:] = lo.min(), hi.max()
    return lo.astype(np.float32), hi.astype(np.float32)


def check_block_finite(block, block_lo, block_hi, input_spec):
    """Refuse a block whose per-slice minima / maxima (depth,) show NaN or inf.

    NaN anywhere in a slice makes its minimum NaN, -inf its minimum, +inf its
    maximum, so the ranges of the pass are enough (the data are not read again).

    Raises:
        ValueError: naming ``INPUT input_spec``, the block and its first bad slice.
    """
    bad = ~(np.isfinite(block_lo) & np.isfinite(block_hi))
    if bad.any():
        z = block.z[0] + int(np.argmax(bad))
        raise ValueError(f"INPUT {input_spec} contains NaN or infinite values (slice z={z}, "
                         f"block {block.name}: y {block.y[0]}:{block.y[1]}, "
                         f"x {block.x[0]}:{block.x[1]}); replace them (e.g. numpy.nan_to_num) "
                         "before predicting")


def _settings(name, shape, block_shape, model_name, options):
    return {"input": name, "shape": list(shape), "block": list(block_shape),
            "model": model_name,
            **{k: options[k] for k in ("normalization", "tile_shape", "overlap", "tta",
                                       "blending", "align", "precision", "engine")}}


# ------------------------------------------------------------------ engine and precision

def _resume_options(options, previous):
    """``options`` with an ``"auto"`` engine / precision replaced by what ``previous`` recorded.

    An output of an earlier version records no engine: ``"auto"`` resumes it
    plain, the default then (an explicit engine is accepted too).

    Args:
        options: the Predictor options of this run.
        previous: settings dict of the output being resumed, or None.
    """
    from fusionnet_tf.choices import ENGINES, PRECISIONS

    if not previous:
        return options
    recorded = {**storage.SETTINGS_BEFORE_THEY_WERE_RECORDED, "engine": "plain", **previous}
    resumed = {}
    for key, allowed in (("engine", ENGINES), ("precision", PRECISIONS)):
        if getattr(options, key) == "auto" and recorded.get(key) in allowed:
            resumed[key] = recorded[key]
    return options.replace(**resumed)


def _call_plan(options, shape):
    """``(calls, inputs per call)`` of whole-slice prediction of the volume (for auto engines)."""
    from fusionnet_tf.inference.predictor import inputs_per_call, network_calls

    depth, height, width = shape
    grid = _slice_grid(options, height, width)
    return network_calls(options, grid, depth), inputs_per_call(options, grid)


def _resolve_variant(predictor, options, plan, progress):
    """Let a live Predictor's auto engine choose now; return its ``variant`` dict.

    With an explicit engine and precision (e.g. from a resumed output) it runs
    those without timing.
    """
    from fusionnet_tf.inference import autotune

    prefer = None
    if "auto" not in (options.engine, options.precision):
        prefer = {"engine": options.engine, "precision": options.precision}
    if progress and isinstance(getattr(predictor, "network", None), autotune.AutoNetwork):
        predictor.network.report = autotune.print_to_stderr
    if not hasattr(predictor, "resolve_engine"):  # a duck-typed predictor
        return {"engine": "as-is", "precision": "float32"}
    calls, size = plan
    variant = predictor.resolve_engine(calls=calls, inputs=size, prefer=prefer)
    if prefer is not None and variant["engine"] != "as-is" and variant != prefer:
        raise ValueError(f"the run asks for engine {prefer['engine']!r} and precision "
                         f"{prefer['precision']!r}, but the Predictor runs engine "
                         f"{variant['engine']!r} and precision {variant['precision']!r}; "
                         "pass matching settings (or engine/precision 'auto')")
    return variant


def _client_variant(model_path, options, plan, progress):
    """The variant Dask workers will run: chosen here, once, so that all run the same.

    Loads the model in this process only when the engine or precision is "auto".
    """
    if "auto" not in (options.engine, options.precision):
        return {"engine": options.engine, "precision": options.precision}
    from fusionnet_tf.inference import Predictor, load_model

    predictor = Predictor(load_model(model_path), options, progress=False)
    return _resolve_variant(predictor, options, plan, progress)


def _recorded(options, variant):
    """``options`` as a dict with the engine and precision of the variant that runs (as the
    output records it): a live Predictor's own choice wins over the defaults of ``options``."""
    recorded = options.to_dict()
    if variant["engine"] == "as-is":  # not a Keras model: only "auto" is replaced
        return {**recorded, **{k: variant[k] for k in ("engine", "precision")
                               if recorded[k] == "auto"}}
    return {**recorded, "engine": variant["engine"], "precision": variant["precision"]}


def _explicit(options, variant):
    """Options for the workers' Predictors: the chosen variant, nothing left to time."""
    explicit = _recorded(options, variant)
    return options.replace(precision=explicit["precision"],  # as-is: the engine is ignored
                           engine="plain" if explicit["engine"] == "as-is" else explicit["engine"])


# ------------------------------------------------------------------ entry point

def predict_volume(input_spec, output, model=None, options=None, *,
                   block_shape=(1, 1024, 1024), workers=0,
                   scheduler=None, tf_threads=None, zarr_format=3, overwrite=False,
                   progress=False, block_hook=None, offsets=None, **changes):
    """Block-wise membrane prediction of a chunked ``(Z, Y, X)`` volume into zarr.

    With a 3D affinity model (5D input) the output is (C, Z, Y, X) float32
    affinities with ``kind`` and ``offsets`` attributes, predicted from 3D
    tiles with halos in z, y and x (``fusionnet_tf.volumes.affinities``);
    the tiles are then 3D (see ``Predictor``), and ``offsets`` (else
    ``MODEL.offsets.json``) names the channels.

    Every 2D slice gets the result ``Predictor.predict`` gives for the whole
    slice (same global tile grid, TTA, blending and per-slice normalization),
    but only one block plus its halo is in memory at a time. Finished blocks
    carry a done-marker; rerunning the same call skips them, so a crashed or
    killed run resumes and ends with output identical to an uninterrupted run.

    Args:
        input_spec: ``volume.zarr``, ``volume.zarr:/key`` or ``volume.h5:/key``
            (zarr format 2 or 3, or HDF5), any numeric dtype, ``(Z, Y, X)``.
        output: path of the output zarr store: float32 ``(Z, Y, X)`` membrane
            probability in [0, 1], one chunk per block.
        model: path of a ``.keras`` file / SavedModel folder (needed with Dask),
            None for the shipped pretrained model, or (``workers=0`` only) a
            live ``keras.Model``, ``Predictor`` or callable on (B, T, T, 1) batches.
        block_shape: ``(block_z, block_y, block_x)`` output block in voxels.
            Defaults to ``(1, 1024, 1024)``.
        options: ``PredictOptions``: the input's normalization (``"slice"``:
            per-slice min-max, the default; ``"global"`` or ``"dtype"``, as
            ``fusionnet_tf.data.normalize``), and the Predictor's tile, overlap,
            TTA, batch size, blending, alignment, engine and precision; None
            for their defaults (``fusionnet_tf.predict_options``). A live
            ``Predictor`` keeps its own (but the normalization of these
            ``options`` applies). An ``"auto"`` engine or
            precision is chosen once, in this process, before any block (so
            all workers run the same variant). The engine and precision that
            run are recorded in the output; a resumed run reuses them where
            this call says ``"auto"`` and refuses others, so an output never
            mixes two.
        workers: 0 runs in this process; N >= 1 starts a local Dask cluster of
            N single-threaded worker processes. Defaults to 0.
        scheduler: address of a running Dask scheduler; overrides ``workers``.
        tf_threads: TensorFlow intra-op threads per worker; defaults to
            ``cpu_count // workers`` on a local cluster and TensorFlow's own
            default on a remote one.
        zarr_format: 2 or 3 for a new output. Defaults to 3.
        overwrite: discard an existing output instead of resuming it.
        progress: show a progress bar over blocks on stderr.
        block_hook: optional ``hook(block)`` run before each block is written
            (``workers=0`` only; for fault-injection tests).
        offsets: 3D affinity models only: list of (dz, dy, dx), or None.
        **changes: options by name, applied to ``options`` (``tta=1``,
            ``normalization="global"``).

    Returns:
        dict: ``blocks_total``, ``blocks_skipped`` (done before), ``blocks_computed``,
        ``voxels_computed``, ``seconds``, ``voxels_per_s``, ``blocks_per_worker``
        ({worker: count}), ``model_loads`` ({worker: models loaded by it}),
        ``halo`` ((y, x): largest reach of a block's input past the block among
        the blocks computed), ``tiles_predicted``, ``tile_ratio`` (tile
        predictions relative to whole-slice prediction of the same voxels: 1.0
        when blocks span whole slices; blocks that split slices recompute the
        tiles straddling their borders), ``output``, ``executor``.

    Raises:
        FileNotFoundError, KeyError, ValueError: bad input, model or options
            (see ``storage.open_volume`` and ``storage.open_output_for_resume``);
            a float input holding NaN or inf is refused before the output exists.
        FileExistsError: the output exists and is not a zarr array.
        BlockFailures: some blocks raised (the rest are written and marked).

    Example:
    >>> summary = predict_volume("em.h5:/raw", "membranes.zarr", "model.keras",
    ...                          PredictOptions(tta=1), workers=2)
    >>> summary["blocks_computed"]
    12
    """
    block_shape = check_block_shape(block_shape)
    options = PredictOptions.given(options, **changes)
    from fusionnet_tf.inference.predictor import check_precision_applies

    if not _is_predictor(model):  # before any model is loaded; a Predictor keeps its own
        check_precision_applies(options.precision, model)
    if is_affinity_model(model):
        return _predict_affinities(input_spec, output, model, options, offsets, dict(
            block_shape=block_shape, normalization=options.normalization, workers=workers,
            scheduler=scheduler, tf_threads=tf_threads, zarr_format=zarr_format,
            overwrite=overwrite, progress=progress, block_hook=block_hook))
    if offsets is not None:
        raise ValueError("`offsets` apply to 3D affinity models (input (B, Z, Y, X, 1)); the "
                         "model takes 2D images")
    model_path, live_model, model_name, distributed_run = _check_run(
        model, options, workers, scheduler, block_hook)
    shape, name = _input_shape(input_spec, output)
    blocks = block_grid(shape, block_shape)
    input_spec = str(input_spec)
    threads = _tf_threads(tf_threads, workers, scheduler)
    # a resumed output keeps the engine and precision it was started with
    options = _resume_options(options, None if overwrite else storage.recorded_settings(output))
    plan = _call_plan(options, shape)
    predictor = None
    if not distributed_run:  # load (or wrap) the model before touching the output
        predictor = _live_predictor(
            live_model if live_model is not None
            else blockwise.worker_predictor(blockwise.PredictorSpec(
                model=model_path, options=options, tf_threads=threads)),
            options)
        variant = _resolve_variant(predictor, options, plan, progress)
    else:
        variant = _client_variant(model_path, options, plan, progress)
    settings = _settings(name, shape, block_shape, model_name, _recorded(options, variant))
    spec = blockwise.PredictorSpec(model=model_path, options=_explicit(options, variant),
                                   tf_threads=threads) if model_path else None
    job = blockwise.VolumeJob(input_spec=input_spec, output_path=str(output), predictor=spec,
                              normalization=options.normalization)

    context = executor_context(workers, scheduler)
    # an output of another run fails here, before a cluster starts
    array = storage.open_output_for_resume(output, shape, block_shape, settings, overwrite)
    with context as executor:
        start = time.perf_counter()
        if array is None:
            lo, hi = _new_output(output, input_spec, blocks, (shape, block_shape, settings),
                                 zarr_format, executor, progress)
        else:
            lo, hi = _stored_intensity_ranges(array)
        todo = [b for b in blocks if not storage.is_done(output, b)]
        items = [(job, b, lo[slice(*b.z)], hi[slice(*b.z)]) for b in todo]
        summary, failures = _run_blocks(executor, _block_task(predictor, block_hook), items,
                                        progress)
        seconds = time.perf_counter() - start

    _complete_summary(summary, len(blocks), len(todo), seconds, output, executor.name)
    if failures:
        raise BlockFailures(summary, failures)
    return summary


def is_affinity_model(model):
    """True for a 3D affinity model: a path, keras.Model, callable or Predictor."""
    from fusionnet_tf.inference.predictor import model_file_spatial_dims, model_spatial_dims

    if model is None:
        return False  # the shipped model is 2D
    if _is_predictor(model):
        return getattr(model, "spatial_dims", 2) == 3
    if isinstance(model, (str, Path)):
        return Path(model).exists() and model_file_spatial_dims(model) == 3
    return model_spatial_dims(model) == 3


def _predict_affinities(input_spec, output, model, options, offsets, run):
    """``predict_volume`` with a 3D affinity model; ``run`` holds the run's other arguments."""
    from fusionnet_tf.inference import Predictor, load_model
    from fusionnet_tf.inference.predictor import read_model_offsets
    from fusionnet_tf.volumes import affinities

    workers = check_int("workers", run["workers"], 0)
    model_path, live_model, model_name = _resolve_model(model)
    distributed_run = is_distributed(workers, run["scheduler"])
    _check_dask_model(model_path, model, distributed_run)
    check_block_hook(run["block_hook"], distributed_run)
    if offsets is None and model_path is not None:
        offsets = read_model_offsets(model_path)
    threads = _tf_threads(run["tf_threads"], workers, run["scheduler"])
    if _is_predictor(live_model):
        predictor = live_model
    elif live_model is not None:
        predictor = Predictor(live_model, options, progress=False, offsets=offsets)
    elif distributed_run:  # checked here; each worker loads its own
        predictor = Predictor(load_model(model_path), options, progress=False, offsets=offsets)
    else:
        predictor = blockwise.worker_predictor(blockwise.PredictorSpec(
            model=model_path, options=options, tf_threads=threads,
            offsets=None if offsets is None else tuple(tuple(o) for o in offsets)))
    return affinities.predict_affinity_volume(
        input_spec, output, predictor, model_path, model_name, tf_threads=threads,
        **{k: run[k] for k in ("block_shape", "normalization", "workers", "scheduler",
                               "zarr_format", "overwrite", "progress", "block_hook")})


def _check_run(model, options, workers, scheduler, block_hook):
    """Validate the options that need no input data; resolve the model.

    Returns:
        ``(model_path or None, live_model or None, model_name, distributed_run)``:
        the first three as ``_resolve_model``; ``distributed_run`` is True with Dask.
    """
    check_int("workers", workers, 0)
    model_path, live_model, model_name = _resolve_model(model)
    distributed_run = is_distributed(workers, scheduler)
    _check_dask_model(model_path, model, distributed_run)
    check_block_hook(block_hook, distributed_run)
    _slice_grid(options, 1, 1)  # checks the tile, overlap and tta early
    from fusionnet_tf.inference.predictor import check_precision_applies

    if not _is_predictor(live_model):  # a live Predictor keeps its own precision
        check_precision_applies(options.precision,
                                model_path if model_path is not None else live_model)
    return model_path, live_model, model_name, distributed_run


def _check_dask_model(model_path, model, distributed_run):
    """Refuse a live model for a Dask run: each worker loads the model from its path.

    Raises:
        ValueError: ``distributed_run`` and ``model_path`` is None (naming the
            type of ``model``).
    """
    if distributed_run and model_path is None:
        raise ValueError("with Dask (workers >= 1 or scheduler) `model` must be a path, so "
                         f"each worker loads it once; received model of type "
                         f"{type(model).__name__}")


def _input_shape(input_spec, output):
    """``(shape, name)`` of the input volume; refuses an output that is the input."""
    volume, name = storage.open_volume(input_spec)
    check_not_input(output, input_spec, "OUTPUT", "INPUT")
    shape = tuple(int(n) for n in volume.shape)
    close_stack(volume)
    return shape, name


def _tf_threads(tf_threads, workers, scheduler):
    """TensorFlow intra-op threads per worker: given, cores / workers locally, else 0 (default)."""
    if tf_threads is None:
        tf_threads = 0 if (scheduler or not workers) else max(1, (os.cpu_count() or 1) // workers)
    return int(tf_threads)


def _new_output(output, input_spec, blocks, layout, zarr_format, executor, progress):
    """Measure the intensity ranges, then create the output store recording them.

    Args:
        layout: ``(shape, block_shape, settings)``; ``settings`` gains the ranges.

    Returns:
        ``(lo, hi)``: float32 (Z,) per-slice normalization bounds.
    """
    shape, block_shape, settings = layout
    volume, _ = storage.open_volume(input_spec)
    try:
        lo, hi = intensity_ranges(volume, blocks, settings["normalization"], executor,
                                  input_spec, progress)
    finally:
        close_stack(volume)
    settings.update(intensity_lo=lo.tolist(), intensity_hi=hi.tolist())
    storage.create_output(output, shape, block_shape, settings, zarr_format)
    return lo, hi


def _stored_intensity_ranges(array):
    """``(lo, hi)`` float32 (Z,) recorded in an existing output (a resumed run)."""
    stored = array.attrs[storage.ATTRS_KEY]
    return (np.asarray(stored["intensity_lo"], np.float32),
            np.asarray(stored["intensity_hi"], np.float32))


def _complete_summary(summary, blocks_total, blocks_todo, seconds, output, executor_name):
    """Add totals, speed and the tile ratio to the counts of ``_run_blocks`` (in place)."""
    share = summary.pop("tiles_share")
    summary.update(
        blocks_total=blocks_total, blocks_skipped=blocks_total - blocks_todo, seconds=seconds,
        voxels_per_s=summary["voxels_computed"] / seconds if seconds else 0.0,
        tile_ratio=summary["tiles_predicted"] / share if share else 1.0,
        output=str(output), executor=executor_name,
    )


def _block_task(predictor, hook):
    """The per-block callable: module-level for Dask, a closure in-process."""
    if predictor is None and hook is None:
        return blockwise.process_block
    return lambda job, block, lo, hi: blockwise.process_block(job, block, lo, hi,
                                                              predictor=predictor, hook=hook)


def _run_blocks(executor, task, items, progress):
    """Run the prediction ``task`` over ``items``; collect counts and failures."""
    summary = {"blocks_computed": 0, "voxels_computed": 0, "blocks_per_worker": {},
               "model_loads": {}, "halo": (0, 0), "tiles_predicted": 0, "tiles_share": 0.0}
    results, failures = run_tasks(executor, task, items, progress, "predict-volume")
    for _, info in results:
        if info["skipped"]:
            continue
        worker = info["worker"]
        summary["blocks_computed"] += 1
        summary["voxels_computed"] += info["voxels"]
        count_block(summary["blocks_per_worker"], worker)
        summary["model_loads"][worker] = max(summary["model_loads"].get(worker, 0),
                                             info["loads"])
        summary["halo"] = tuple(max(a, b) for a, b in itertools.zip_longest(
            summary["halo"], info["halo"], fillvalue=0))  # (y, x), or (z, y, x) in 3D
        summary["tiles_predicted"] += info["tiles"]
        summary["tiles_share"] += info["tiles_share"]
    return summary, failures


def format_summary(summary):
    """One line for the CLI: blocks, voxels/s, workers."""
    speed = speed_line(summary["voxels_computed"], summary["seconds"], summary["voxels_per_s"])
    return (f"{blocks_line(summary, 'blocks_computed', 'computed')}: {speed}, "
            f"{summary['tile_ratio']:.2f}x the tiles of whole-slice prediction -> "
            f"{summary['output']}")


__all__ = ["predict_volume", "is_affinity_model", "intensity_ranges", "format_summary",
           "NORMALIZATIONS"]
