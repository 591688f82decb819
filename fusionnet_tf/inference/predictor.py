"""Seamless overlap-tile prediction of 2D images and (N, H, W) stacks.

``Predictor.predict`` is built from three public pieces that block-wise volume
prediction reuses to get identical results:

1. ``tile_origins(height, width)``: the tile grid of a slice (after reflect
   padding of slices smaller than a tile, at the bottom/right);
2. ``predict_tiles(tiles)``: the network on a batch of tiles, with test-time
   augmentation;
3. ``blend_weights``: the (tile, tile) weight map each tile prediction is
   multiplied by before it is added into the output buffer.

The output is the weighted sum of tile predictions divided by the summed
weights, cropped back to the input size. Tile predictions and weights are
accumulated in float32 in the raster order of ``tile_origins``; doing the same
gives bit-identical results (the network itself may round differently for
different batch compositions, at the 1e-7 level).

Every network call holds ``inputs_per_call(height, width)`` inputs (padded
with zero tiles when fewer are left), so a tile's result does not depend on
how many tiles came with it. By default that is the TTA variants of as few
tiles as give a call about 256 x 256 pixels (one 512 x 512 tile; 16 tiles of
64 x 64 without TTA), never more tiles than one slice has: one tile is never
padded.

A Keras model runs on the engine ``engine`` chooses (``"auto"``: the fastest of
plain oneDNN, frozen oneDNN (weights as graph constants) and XLA on this machine
for the job, timed on the first batch and cached; see
``fusionnet_tf.inference.autotune``).

3D affinity models (Keras input (B, Z, Y, X, 1), output (B, Z, Y, X, C)
sigmoid, one channel per offset (dz, dy, dx)) run through the same class: the
Predictor detects the 5D input. A (Z, Y, X) volume is predicted with 3D tiles
``(tz, ty, tx)`` blended in z, y and x (the outer product of one window per
axis); along an axis shorter than the tile, the tile shrinks to the volume
size rounded up to the model's input multiple along that axis, and the volume
is padded at the end to it (reflect; edge for a single section). The output
is (C, Z, Y, X) float32. TTA for affinities maps every offset channel back to
its direction and shifts reversed offsets (``affinity_tta``). Every network
call holds ``batch_size`` inputs (default 1: 3D tiles are large). The auto
engine does not time 3D models (a call takes seconds): in float32 they run
frozen, about 20% faster per call than plain at no set-up cost for the shipped
base-8 model (``autotune.untimed_variant``); an explicit engine and precision
are honoured.
"""

import functools
import math
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice, check_int
# tta -> dihedral transform indices (see fusionnet_tf.dihedral), re-exported
from fusionnet_tf.choices import TTA_TRANSFORMS  # noqa: F401
from fusionnet_tf.choices import INFERENCE_PRECISION_CHOICES
from fusionnet_tf.data.normalize import check_finite
from fusionnet_tf.dihedral import dihedral_np, inverse_dihedral_np
from fusionnet_tf.inference import affinity_tta, autotune, tiling
from fusionnet_tf.inference.affinity_tta import TTA_TRANSFORMS_3D
# loading model files is the backends' job (one adapter per runtime); load_model re-exported
from fusionnet_tf.inference.backends import load_model, resolve_model_path
from fusionnet_tf.inference.backends.keras_file import keras_file_spatial_dims
from fusionnet_tf.predict_options import PredictOptions


# pixels one network call should hold at least, with the default batch size: measured on
# 2 AVX-512 cores, base 16, per-tile cost of 1 vs 4 tiles per call: 64 px 9.1 vs 5.1 ms,
# 128 px 19 vs 15 ms, 256 px and 512 px the same (benchmarks/bench_auto_mode.py)
CALL_PIXELS = 256 * 256

class KerasFunction:
    """A Keras model compiled for fast inference on one tile size.

    The model is copied with BatchNormalization folded into the convolutions
    and the chosen compute precision (``inference_copy``) and run through one
    ``tf.function`` whose input signature fixes the tile size (any batch
    size), so it is traced once (``optimize.inference_function``).

    Weights as graph constants (``constant_weights=True``, the Predictor's
    engine ``"frozen"``) let oneDNN reorder each kernel once into its blocked
    layout and keep it; with variable weights TensorFlow uses the unblocked
    layout at batch 1 (or reorders every call). Measured on 2 AVX-512 cores
    (Zen 5), one 512 px slice, each setting in its own process: base 64
    (286 MiB of weights) 12-14% faster per call (more under load) but
    +7-13 s on the first call (constant folding); base 16 (18 MiB) 0-5%
    faster per call, +0.15-0.25 s on the first (0.8 s), paid back after ~35
    slices. The rule: variables by default (nothing to pay back), constants
    when asked, which the auto engine does for jobs long enough to pay for
    the set-up. The constants are a snapshot of the weights when the
    function is made.

    Args:
        model: ``keras.Model`` taking (B, T, T, 1) float32.
        tile: int. Tile side T.
        fold: bool. Fold BatchNormalization. Defaults to True.
        jit_compile: bool. Compile with XLA. On a CPU this pays off for wide
            models (base 64: about 15% faster than oneDNN) and costs at
            narrow ones (base 16: about 40% slower); see BENCHMARKS.md.
            Defaults to False.
        precision: ``"float32"``, ``"mixed_bfloat16"`` or ``"mixed_float16"``
            (see ``inference_copy``). Defaults to ``"float32"``.
        constant_weights: bool. Weights as graph constants (see above).
            Defaults to False.

    Attributes:
        jit_compile: bool. precision: str. As given.
        constant_weights: bool. Whether the weights are graph constants.

    Raises:
        ValueError: ``constant_weights=True`` for weights over
            ``optimize.MAX_CONSTANT_BYTES`` (a graph holds at most 2 GB).

    Call with a (B, T, T, 1) float32 NumPy batch; returns (B, T, T, C) float32.
    """

    def __init__(self, model, tile, fold=True, jit_compile=False, precision="float32",
                 constant_weights=False):
        from fusionnet_tf.inference import optimize

        if constant_weights and optimize._weight_bytes(model) > optimize.MAX_CONSTANT_BYTES:
            raise ValueError(f"constant_weights=True: the weights of {model.name!r} take more "
                             f"than {optimize.MAX_CONSTANT_BYTES >> 20} MiB, too many for a graph")
        self.model = optimize.inference_copy(model, fold=fold, precision=precision)
        self.jit_compile, self.precision = bool(jit_compile), precision
        self.constant_weights = bool(constant_weights)
        self.network = optimize.inference_function(self.model, tile, jit_compile=self.jit_compile,
                                                   constant_weights=self.constant_weights)

    def __call__(self, batch):
        return self.network(batch).numpy()


def check_precision_applies(precision, model):
    """Raise ValueError unless inference ``precision`` is valid and can apply to ``model``.

    A precision other than float32 needs a Keras model (``inference_copy``
    recasts its layers); a SavedModel or a serving endpoint runs in the
    precision it was exported with. Cheap: nothing is loaded, so callers can
    check before reading any data.

    Args:
        precision: one of ``INFERENCE_PRECISION_CHOICES`` (``"auto"`` applies
            to any model: other callables run as they are).
        model: a ``keras.Model``, a ``.keras`` / SavedModel path, a serving
            URL (``http(s)://...``), None (the shipped ``.keras`` model) or
            any other callable.

    Raises:
        ValueError: naming the precision and the model.
    """
    check_choice("precision", precision, INFERENCE_PRECISION_CHOICES)
    if precision in ("float32", "auto") or model is None or _keras_depth(model) is not None:
        return
    if isinstance(model, (str, Path)):
        text = str(model)
        if text.startswith(("http://", "https://")):
            what = f"the serving endpoint {text}"
        elif Path(text).is_dir():
            what = f"the SavedModel {text}"
        elif Path(text).suffix.lower() in (".onnx", ".tflite"):
            what = f"the exported model {text}"
        else:
            return  # a .keras file or a bioimage.io package (its keras_v3 weights)
    else:
        what = f"a model of type {type(model).__name__}"
    raise ValueError(f"precision={precision!r} applies to Keras models only; {what} runs in "
                     "the precision it was exported with")


class Predictor:
    """Overlap-tile predictor with blending and test-time augmentation.

    Args:
        model: a ``keras.Model``, a path or shipped model name accepted by
            ``load_model`` (``fusionnet_tf.inference.backends``), or any
            callable mapping a (B, T, T, 1) float32 NumPy batch in [0, 1] to
            (B, T, T, 1) (or (B, T, T)) membrane probabilities, e.g. a REST
            ``ServingClient``.
        options: ``fusionnet_tf.predict_options.PredictOptions`` or None
            (its defaults): tile size, overlap, TTA (default 8), batch size,
            blending, alignment, engine and precision; each option's meaning,
            unit and default are documented there, once. For a 3D model an
            int tile side T means (tile_z, T, T) tiles (default 16) and an int
            overlap O means (overlap_z, else tile depth // 4, O, O). Its
            ``normalization`` is for the caller (``predict`` takes images
            already in [0, 1]). The tile side must be a multiple of the
            model's input multiple (``2**depth`` for a 2D Keras model; per
            axis for a 3D one). An alignment of None is the input multiple of
            a Keras model (those tiles see the pooling grid of the whole
            image), 1 otherwise.
        **changes: options by name, applied to ``options``:
            ``Predictor(model, tta=1)`` is ``Predictor(model, PredictOptions(tta=1))``.
        progress: bool. Show a tqdm progress bar over tiles on stderr; the
            auto engine then says what it chose. Defaults to False.
        fold_batchnorm: bool. Fold BatchNormalization into the convolutions
            of a Keras model for speed (same result to ~1e-6). Defaults to True.
        offsets: list of (dz, dy, dx) or None. 3D affinity models only: the
            offset of each output channel (as many as the model's channels).
            None: read from ``MODEL.offsets.json`` beside a model given as a
            path (``read_model_offsets``), else unknown (then ``tta`` must
            be 1).

    Attributes:
        options: the ``PredictOptions`` given (with ``changes`` applied).
        tile_shape, overlap, tta, batch_size, blending, precision, engine: the
            options as this model uses them (for a 3D model ``tile_shape``,
            ``overlap`` per axis).
        grid_for: ``grid_for(*shape)``, the ``tiling.TileGrid`` of an image.
        network: the callable run on each (B, T, T, 1) float32 batch (for
            Keras models a ``KerasFunction``, or an ``autotune.AutoNetwork``
            choosing between several; else ``model`` itself).
        variant: dict ``{"engine", "precision"}`` the network runs with, or
            None while the auto engine has not chosen (see ``resolve_engine``).
        blend_weights: (T, T) float32 blend weights, strictly positive.
        align: int. Alignment of the tile origins.
        input_multiple: int or None. The Keras model's input multiple (None
            for other callables); ``(z, y, x)`` for a 3D model.
        spatial_dims: 2, or 3 for a 3D model (detected from its 5D input; a
            callable says so with a ``spatial_dims = 3`` attribute).
        offsets: tuple of (dz, dy, dx) int tuples, or None (2D models, or
            offsets unknown).
        channels: output channels (1 for 2D models; None for a 3D callable).

    Raises:
        ValueError: for invalid settings, e.g. ``tile_shape`` not a multiple
            of the model's input multiple.

    Example:
    >>> options = PredictOptions(tile_shape=64, overlap=16, tta=1)
    >>> predictor = Predictor(build_fusionnet(base_filters=4, depth=2), options)
    >>> predictor.predict(np.random.rand(100, 90).astype("float32")).shape
    (100, 90)
    """

    def __init__(self, model, options=None, *, progress=False, fold_batchnorm=True,
                 offsets=None, **changes):
        options = PredictOptions.given(options, **changes)
        model_path = None
        if isinstance(model, (str, Path)):
            model_path = resolve_model_path(model)
            model = load_model(model_path)
        self.options = options
        self.blending, self.batch_size = options.blending, options.batch_size
        self.progress = bool(progress)
        if model_spatial_dims(model) == 3:
            self._init_3d(model, model_path, fold_batchnorm, offsets)
            return
        if offsets is not None:
            raise ValueError("`offsets` apply to 3D affinity models (input (B, Z, Y, X, 1)); "
                             "this model takes 2D (B, H, W, 1) inputs")
        self.spatial_dims, self.offsets, self.channels = 2, None, 1
        self.tile_shape = options.tile(2)[0]
        if len(set(options.overlaps(2))) > 1:
            raise ValueError(f"`overlap` must be one int for a 2D model (square tiles); "
                             f"received overlap={options.overlap!r}")
        self.overlap = options.overlaps(2)[0]
        self.tta = check_choice("tta", options.tta, TTA_TRANSFORMS, "for a 2D model")
        check_precision_applies(options.precision, model)
        self.engine, self.precision = options.engine, options.precision
        self._variant = None  # the one variant of a Keras model when there is no choice
        depth, multiple = _keras_depth(model), _keras_input_multiple(model)
        if depth is not None:
            self._check_keras_tile(model, depth, multiple)
            self.network = self._keras_network(model, fold_batchnorm)
        elif callable(model):
            self.network = model
        else:
            raise ValueError(
                "`model` must be a keras.Model, a model path or a callable; received "
                f"model of type {type(model).__name__}"
            )
        self.depth = depth
        self.input_multiple = multiple
        if multiple is None:  # e.g. OnnxRunner / LiteRTRunner know their pooling grid
            multiple = getattr(self.network, "input_multiple", None)
            self._check_callable_tile(multiple)
        self.align = options.align if options.align is not None else (multiple or 1)
        if not isinstance(self.align, int):
            raise ValueError(f"`align` must be an int for a 2D model; received "
                             f"align={self.align!r}")
        tiling.check_tile_args(self.tile_shape, self.overlap, self.align)
        self.blend_weights = tiling.blend_weights(self.tile_shape, self.blending)

    def _init_3d(self, model, model_path, fold, offsets):
        """``__init__`` for a 3D affinity model (5D input)."""
        options = self.options
        self.spatial_dims = 3
        self.tile_shape, self.overlap = options.tile(3), options.overlaps(3)
        self.tta = check_choice("tta", options.tta, TTA_TRANSFORMS_3D)
        check_precision_applies(options.precision, model)
        self.engine, self.precision = options.engine, options.precision
        self.depth = _keras_depth(model)
        self.channels = _output_channels(model)
        self.offsets = _resolve_offsets(offsets, model_path, self.channels)
        if self.tta > 1:
            if self.offsets is None:
                raise ValueError(f"tta={self.tta} for an affinity model needs its offsets: pass "
                                 "offsets=[(dz, dy, dx), ...] or write MODEL.offsets.json beside "
                                 "the model")
            affinity_tta.check_tta_offsets(self.offsets, self.tta)
        self.input_multiple = _input_multiples(model)
        align = options.align
        self.align = tuple(check_int("align", a, 1) for a in tiling.per_axis(
            "align", align if align is not None else self.input_multiple, 3))
        self._check_tile_3d(model)
        if self.depth is not None:  # the auto engine does not time 3D models: frozen if it can
            from fusionnet_tf.inference import optimize

            self._variant = autotune.untimed_variant(
                self.engine, self.precision,
                weights_fit_constants=optimize._weight_bytes(model) <= optimize.MAX_CONSTANT_BYTES)
            self.network = _build_keras_function(model, None, fold, self._variant)
        elif callable(model):
            self._variant, self.network = None, model
        else:
            raise ValueError("`model` must be a keras.Model, a model path or a callable; "
                             f"received model of type {type(model).__name__}")
        self.blend_weights = tiling.blend_weights(self.tile_shape, self.blending)

    def _check_tile_3d(self, model):
        for axis, tile, multiple, overlap, align in zip(
                "zyx", self.tile_shape, self.input_multiple, self.overlap, self.align):
            if tile % multiple:
                raise ValueError(f"`tile_shape` must be a multiple of the model's input multiple "
                                 f"{self.input_multiple} along each axis; received "
                                 f"tile_shape={self.tile_shape} ({axis}: {tile})")
            tiling.check_tile_args(tile, overlap, align)
        fixed = tuple(getattr(model, "input_shape", (None,) * 5)[1:4])
        if None not in fixed and fixed != self.tile_shape:
            raise ValueError(f"the model only accepts {fixed} inputs; received "
                             f"tile_shape={self.tile_shape}")

    def tile_for(self, shape):
        """The (tz, ty, tx) tile a 3D model uses on a volume of ``shape`` (Z, Y, X).

        Per axis ``min(tile, size rounded up to the input multiple)``: a volume
        shorter than the tile along an axis is padded only to the model's
        input multiple there, not to the whole tile.
        """
        return tuple(min(t, -(-int(n) // m) * m)
                     for t, n, m in zip(self.tile_shape, shape, self.input_multiple))

    def _overlap_for(self, tile):
        return tuple(max(0, min(o, t - a)) for o, t, a in zip(self.overlap, tile, self.align))

    def _keras_network(self, model, fold):
        """A ``KerasFunction``, or an ``AutoNetwork`` when engine/precision leave a choice."""
        variants = autotune.candidate_variants(self.engine, self.precision)
        build = functools.partial(_build_keras_function, model, self.tile_shape, fold)
        if len(variants) == 1:
            self._variant = variants[0]
            return build(variants[0])
        report = autotune.print_to_stderr if self.progress else None
        return autotune.AutoNetwork(model, variants, build, report=report,
                                    describe=f"model {model.name!r}, {self.tile_shape} px tiles")

    @property
    def variant(self):
        """``{"engine", "precision"}`` the network runs with; None before the auto engine chose.

        ``{"engine": "as-is", "precision": "float32"}`` for a callable that is
        not a Keras model (it runs as it was exported).
        """
        if isinstance(self.network, autotune.AutoNetwork):
            chosen = self.network.variant
        elif self.depth is None:  # another callable runs as it is
            return {"engine": "as-is", "precision": "float32"}
        else:
            chosen = self._variant
        return None if chosen is None else {"engine": chosen.engine,
                                            "precision": chosen.precision}

    def resolve_engine(self, calls=None, inputs=None, prefer=None):
        """Let the auto engine choose now, before the first batch; return ``variant``.

        Times the variants on a synthetic batch of the call shape (the speed
        does not depend on the pixel values) unless the cache holds the
        choice. Does nothing once a variant runs, or for a single variant.

        Args:
            calls: int or None. Network calls the job will make (see
                ``autotune.AutoNetwork.resolve``).
            inputs: int or None. Inputs per call of the job (the batch size
                timed); None = ``inputs_per_call()``.
            prefer: dict ``{"engine", "precision"}`` or None. Run this variant
                without timing (e.g. the one a resumed volume was started with).

        Returns:
            ``variant``: dict ``{"engine", "precision"}``.
        """
        network = self.network
        if isinstance(network, autotune.AutoNetwork) and network.network is None:
            if prefer is not None:
                network.use(autotune.Variant(prefer["engine"], prefer["precision"]))
            else:
                rng = np.random.default_rng(0)
                side = self.tile_shape
                size = inputs or self.inputs_per_call()
                batch = rng.random((size, side, side, 1), dtype=np.float32)
                network.resolve(batch, calls)
        return self.variant

    def _check_callable_tile(self, multiple):
        if multiple and self.tile_shape % multiple:
            raise ValueError(f"`tile_shape` must be a multiple of {multiple} for this model (its "
                             f"input multiple); received tile_shape={self.tile_shape}")

    def _check_keras_tile(self, model, depth, multiple):
        if self.tile_shape % multiple:
            raise ValueError(
                f"`tile_shape` must be a multiple of 2**depth = {multiple} for this model "
                f"(depth {depth}); received tile_shape={self.tile_shape}"
            )
        fixed = tuple(model.input_shape[1:3])
        if None not in fixed and fixed != (self.tile_shape, self.tile_shape):
            raise ValueError(
                f"the model only accepts {fixed[0]}x{fixed[1]} inputs; received "
                f"tile_shape={self.tile_shape}"
            )

    # === Public building blocks ===

    def tile_origins(self, *shape):
        """Tile grid of one (height x width) slice, or of a (Z, Y, X) volume for a 3D model.

        For a 3D model: ``tile_origins(depth, height, width)`` gives the
        ``(z, y, x)`` origins of ``tile_for(shape)`` tiles on the padded
        volume (C order); the rest of this docstring is about 2D.

        A slice smaller than the tile along an axis is first reflect-padded at
        the bottom/right to the tile size (``tiling.pad_to_tile``); the grid
        refers to that padded slice. Along each axis the first tile starts at
        0, the last ends at the (padded) border, and neighbours overlap by at
        least ``overlap``.

        Args:
            height: int. Slice height before padding.
            width: int. Slice width before padding.

        Returns:
            List of ``(y, x)`` top-left corners in raster order.

        Raises:
            ValueError: ``shape`` has another number of axes than the model.
        """
        return self.grid_for(*shape).origins

    def grid_for(self, *shape):
        """The ``tiling.TileGrid`` of one (height, width) slice, or a (Z, Y, X) volume in 3D.

        2D: ``tile_shape`` square tiles with ``overlap`` and ``align``. 3D: the
        ``tile_for(shape)`` tiles, the overlap clamped below them.

        Raises:
            ValueError: ``shape`` has another number of axes than the model.
        """
        if len(shape) != self.spatial_dims:
            raise ValueError(f"`shape` must have {self.spatial_dims} sizes for this "
                             f"{self.spatial_dims}D model; received {shape}")
        if self.spatial_dims == 3:
            tile = self.tile_for(shape)
            return tiling.TileGrid.of(shape, tile, self._overlap_for(tile), self.align)
        return tiling.TileGrid.of(shape, self.tile_shape, self.overlap, self.align)

    def predict_tiles(self, tiles, inputs_per_call=None):
        """Membrane probabilities of a batch of tiles, averaged over TTA.

        Every tile is transformed by each TTA transform, the network runs on
        all variants in calls of ``inputs_per_call`` inputs (the last one
        padded), each prediction is transformed back, and the variants are
        averaged.

        Args:
            tiles: (B, T, T) float32 array, normalized to [0, 1].
            inputs_per_call: int or None. Network inputs per call; None =
                ``inputs_per_call()``. Pass ``inputs_per_call(height, width)``
                of the slices the tiles come from to reproduce ``predict``
                exactly (block-wise prediction does).

        Returns:
            (B, T, T) float32 membrane probabilities.

        Raises:
            ValueError: if ``tiles`` is not (B, T, T) with T = ``tile_shape``.

        For a 3D model ``tiles`` is (B, tz, ty, tx) float32 and the result
        (B, tz, ty, tx, C) float32 affinities, averaged over the TTA
        transforms with each offset channel mapped back (``affinity_tta``).
        """
        tiles = np.asarray(tiles, np.float32)
        if self.spatial_dims == 3:
            return self._predict_tiles_3d(tiles, inputs_per_call)
        side = self.tile_shape
        if tiles.ndim != 3 or tiles.shape[1:] != (side, side):
            raise ValueError(
                f"`tiles` must have shape (B, {side}, {side}); received shape {tiles.shape}"
            )
        size = check_int("inputs_per_call", inputs_per_call or self.inputs_per_call(), 1)
        transforms = TTA_TRANSFORMS[self.tta]
        variants = np.concatenate([dihedral_np(tiles[..., None], k) for k in transforms])
        outputs = np.concatenate([
            self._run_full_batch(variants[start:start + size], size)
            for start in range(0, len(variants), size)
        ])
        outputs = outputs.reshape(len(transforms), len(tiles), side, side, 1)
        total = np.zeros((len(tiles), side, side, 1), np.float32)
        for k, output in zip(transforms, outputs):
            total += inverse_dihedral_np(output, k)
        return total[..., 0] / np.float32(len(transforms))

    def _predict_tiles_3d(self, tiles, inputs_per_call):
        if tiles.ndim != 4 or 0 in tiles.shape:
            raise ValueError(f"`tiles` must have shape (B, tz, ty, tx) for a 3D model; "
                             f"received shape {tiles.shape}")
        size = check_int("inputs_per_call", inputs_per_call or self.inputs_per_call(), 1)
        transforms = TTA_TRANSFORMS_3D[self.tta]
        outputs = []
        for t in transforms:  # one transform at a time: a quarter turn swaps ty and tx
            variants = affinity_tta.transform_np(tiles[..., None], t)
            outputs.append(np.concatenate([
                self._run_full_batch(variants[start:start + size], size)
                for start in range(0, len(variants), size)
            ]))
        if len(transforms) == 1:
            return outputs[0]
        return affinity_tta.merge_affinity_tta(outputs, transforms, self.offsets)

    def inputs_per_call(self, height=None, width=None):
        """Network inputs (tiles x TTA variants) per call for slices of ``height`` x ``width``.

        ``batch_size`` if it was given. Otherwise the TTA variants of ``k``
        tiles, ``k`` the fewest tiles with ``CALL_PIXELS`` (256 x 256) pixels
        or more (per-call overhead dominates small calls), but no more than
        the tiles of one such slice, so a single tile is never padded.

        Args:
            height, width: int or None. Slice size; None = no cap.

        Returns:
            int.
        """
        if self.spatial_dims == 3:
            return self.batch_size or 1
        grid = None if height is None or width is None else self.grid_for(height, width)
        return inputs_per_call(self.options, grid)

    def network_calls(self, count, height, width):
        """Network calls ``predict`` makes on a (count, height, width) stack (2D models).

        See ``network_calls`` (the module function); the auto engine weighs
        its set-up against this job size.

        Returns:
            int.
        """
        return network_calls(self.options, self.grid_for(height, width), count)

    def _run_full_batch(self, batch, size):
        """``_run`` on ``batch`` zero-padded to ``size`` inputs; extras dropped.

        oneDNN picks kernels by batch size, so the same tile can differ by
        ~2e-5 between a batch of 4 and a batch of 1. Padding every call to the
        same size makes a tile's result independent of how many tiles came
        with it (block-wise volume prediction relies on this).
        """
        count = len(batch)
        if count < size:
            padding = np.zeros((size - count,) + batch.shape[1:], batch.dtype)
            batch = np.concatenate([batch, padding])
        return self._run(batch)[:count]

    def _run(self, batch):
        output = np.asarray(self.network(np.ascontiguousarray(batch)), np.float32)
        if self.spatial_dims == 3:
            channels = self.channels or (output.shape[-1] if output.ndim == 5 else None)
            if output.shape != batch.shape[:4] + (channels,):
                raise ValueError(f"the model must map (B, Z, Y, X, 1) to (B, Z, Y, X, C); "
                                 f"received output shape {output.shape} for input shape "
                                 f"{batch.shape}")
            if self.offsets is not None and channels != len(self.offsets):
                raise ValueError(f"the model predicts {channels} channels but "
                                 f"{len(self.offsets)} offsets were given")
            return output
        if output.shape == batch.shape[:3]:
            output = output[..., None]
        if output.shape != batch.shape:
            raise ValueError(
                f"the model must map (B, T, T, 1) to (B, T, T, 1); received output shape "
                f"{output.shape} for input shape {batch.shape}"
            )
        return output

    # === Whole images and stacks ===

    def predict(self, images):
        """Predict membrane probability for one image or a stack.

        Args:
            images: (H, W) or (N, H, W) float array, normalized to [0, 1]
                (``fusionnet_tf.data.normalize(raw, mode=options.normalization)``,
                as the entry points do). Any H, W. For a 3D
                model: one (Z, Y, X) volume.

        Returns:
            float32 array of the same shape, membrane probability in [0, 1].
            For a 3D model: (C, Z, Y, X) float32 affinities, channel c for
            ``offsets[c]``.

        Raises:
            ValueError: if ``images`` is not 2D/3D or not finite (for a 3D
                model: not a (Z, Y, X) volume, e.g. a 2D image).
            RuntimeError: if the model produced non-finite values.
        """
        return _run_to_end(self.predict_steps(images))

    def predict_steps(self, images):
        """``predict`` as a generator that reports progress, for GUIs and cancellation.

        Yields ``(done, total)`` tile counts after each group of tiles (the
        first before any network call, ``(0, total)``) and returns the
        prediction (``StopIteration.value``; ``result = yield from
        predictor.predict_steps(images)``). Closing the generator between
        steps stops the work; nothing is returned then.

        Args:
            images: as for ``predict``.

        Returns:
            As ``predict``.

        Raises:
            As ``predict``, when the generator is first advanced.
        """
        images = np.asarray(images, np.float32)
        if self.spatial_dims == 3:
            return (yield from self._predict_volume_3d(images))
        if images.ndim not in (2, 3) or 0 in images.shape:
            raise ValueError(
                f"`images` must be (H, W) or (N, H, W) and non-empty; received shape {images.shape}"
            )
        check_finite(images, "`images`")
        stack = images[None] if images.ndim == 2 else images
        result = yield from self._predict_stack(stack)
        return result[0] if images.ndim == 2 else result

    def tiles_per_batch(self, height=None, width=None):
        """Tiles handed to ``predict_tiles`` at once (for slices of ``height`` x ``width``).

        The smallest count whose TTA variants fill whole network calls
        (``lcm(inputs_per_call, variants) / variants``), so no call is padded
        except the last one.
        """
        variants = len(TTA_TRANSFORMS[self.tta])
        return math.lcm(self.inputs_per_call(height, width), variants) // variants

    def weight_sum(self, *shape):
        """(padded H, padded W) float32 sum of the blend weights over the grid.

        For a 3D model ``weight_sum(depth, height, width)``: the padded
        (Z, Y, X) sum of the ``tile_for(shape)`` weights.
        """
        grid = self.grid_for(*shape)
        weights = tiling.blend_weights(grid.tile if self.spatial_dims == 3 else self.tile_shape,
                                       self.blending)
        total = np.zeros(grid.padded_shape, np.float32)
        for origin in grid.origins:
            total[grid.window(origin)] += weights
        return total

    def _predict_stack(self, stack):
        count, height, width = stack.shape
        side = self.tile_shape
        origins = self.tile_origins(height, width)
        padded = [tiling.pad_to_tile(image, side) for image in stack]
        accumulator = np.zeros((count,) + padded[0].shape, np.float32)
        jobs = [(n, y, x) for n in range(count) for (y, x) in origins]
        size = self.inputs_per_call(height, width)
        chunk = self.tiles_per_batch(height, width)
        if isinstance(self.network, autotune.AutoNetwork):  # the job size, for its choice
            self.network.expected_calls = self.network_calls(count, height, width)
        yield 0, len(jobs)
        with _progress_bar(len(jobs), self.progress) as bar:
            for start in range(0, len(jobs), chunk):
                batch_jobs = jobs[start:start + chunk]
                tiles = np.stack([padded[n][y:y + side, x:x + side] for n, y, x in batch_jobs])
                for (n, y, x), prob in zip(batch_jobs, self.predict_tiles(tiles, size)):
                    accumulator[n, y:y + side, x:x + side] += prob * self.blend_weights
                bar.update(len(batch_jobs))
                yield start + len(batch_jobs), len(jobs)
        result = (accumulator / self.weight_sum(height, width))[:, :height, :width]
        if not np.all(np.isfinite(result)):
            raise RuntimeError(
                "the prediction contains NaN or infinite values; check the model (e.g. a "
                "float16 policy overflowing) and that the input is normalized to [0, 1]"
            )
        return result


    def _predict_volume_3d(self, volume):
        """Generator: (C, Z, Y, X) float32 affinities of a (Z, Y, X) volume (see ``predict``)."""
        if volume.ndim != 3 or 0 in volume.shape:
            what = "a 2D image of " if volume.ndim == 2 else ""
            raise ValueError(f"this 3D model needs a (Z, Y, X) volume; received {what}shape "
                             f"{volume.shape}")
        check_finite(volume, "`images`")
        tile = self.tile_for(volume.shape)
        origins = self.tile_origins(*volume.shape)
        padded = tiling.pad_to_tile(volume, tile)
        weights = tiling.blend_weights(tile, self.blending)[..., None]
        accumulator = None
        chunk = self.inputs_per_call()
        yield 0, len(origins)
        with _progress_bar(len(origins), self.progress) as bar:
            for start in range(0, len(origins), chunk):
                batch = origins[start:start + chunk]
                predictions = self.predict_tiles(np.stack([padded[_window(o, tile)]
                                                           for o in batch]))
                if accumulator is None:
                    accumulator = np.zeros(padded.shape + predictions.shape[-1:], np.float32)
                for origin, prediction in zip(batch, predictions):
                    accumulator[_window(origin, tile)] += prediction * weights
                bar.update(len(batch))
                yield start + len(batch), len(origins)
        depth, height, width = volume.shape
        result = (accumulator / self.weight_sum(*volume.shape)[..., None])[:depth, :height, :width]
        if not np.all(np.isfinite(result)):
            raise RuntimeError("the prediction contains NaN or infinite values; check the model "
                               "and that the input is normalized to [0, 1]")
        return np.ascontiguousarray(np.moveaxis(result, -1, 0))


def inputs_per_call(options, grid=None):
    """Network inputs (tiles x TTA variants) per call of 2D prediction with ``options``.

    ``options.batch_size`` if it was given. Otherwise the TTA variants of
    ``k`` tiles, ``k`` the fewest tiles with ``CALL_PIXELS`` (256 x 256)
    pixels or more (per-call overhead dominates small calls), but no more
    than the tiles of one slice (``grid``), so a single tile is never padded.

    Args:
        options: ``PredictOptions`` (a 2D ``tta``).
        grid: ``tiling.TileGrid`` of one slice, or None (no cap).

    Returns:
        int.
    """
    if options.batch_size is not None:
        return options.batch_size
    variants = len(TTA_TRANSFORMS[options.tta])
    side = options.tile(2)[0]
    tiles = max(1, -(-CALL_PIXELS // (variants * side ** 2)))
    if grid is not None:
        tiles = min(tiles, len(grid))
    return tiles * variants


def network_calls(options, grid, count):
    """Network calls of 2D prediction of ``count`` slices tiled by ``grid``.

    Every tile's TTA variants, in calls of ``inputs_per_call(options, grid)``
    inputs (only the last call is padded).

    Returns:
        int.
    """
    inputs = count * len(grid) * len(TTA_TRANSFORMS[options.tta])
    return -(-inputs // inputs_per_call(options, grid))


def _window(origin, tile):
    """Slices of the tile at ``origin`` (one per axis)."""
    return tuple(slice(o, o + t) for o, t in zip(origin, tile))


def model_spatial_dims(model):
    """3 for a Keras model with a 5D input (or a callable with ``spatial_dims = 3``), else 2."""
    if _keras_depth(model) is not None:
        shape = model.input_shape
        return 3 if isinstance(shape, tuple) and len(shape) == 5 else 2
    return int(getattr(model, "spatial_dims", 2))


def model_file_spatial_dims(path):
    """Spatial axes (2 or 3) of the model stored at ``path``, cheaply where possible.

    A ``.keras`` file: read from its ``config.json`` (the input layer's
    ``batch_shape``) without loading the weights; ``.onnx`` files and
    SavedModel folders are loaded (``load_model``: 3D when their input is 5D);
    other files (``.tflite``, ``.h5``, packages) are 2D.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx" or path.is_dir():
        return model_spatial_dims(load_model(path))
    if path.suffix.lower() != ".keras":
        return 2
    dims = keras_file_spatial_dims(path)
    return dims if dims is not None else model_spatial_dims(load_model(path))


def check_volume_for_3d_model(shape, name):
    """Refuse a single 2D image (``(H, W)`` or ``(1, H, W)``) for a 3D model, in one line.

    Args:
        shape: the image's shape.
        name: how the message names the image (e.g. ``"INPUT a.tif"``).

    Raises:
        ValueError: ``shape`` is not a (Z, Y, X) volume of at least 2 sections.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3 and shape[0] >= 2:
        return
    section = shape[-2:] if len(shape) >= 2 else shape
    raise ValueError(f"{name} is a single 2D image (shape {section}); a 3D model needs a "
                     "(Z, Y, X) volume of several sections")


def _output_channels(model):
    """Output channels of a Keras model, or None (other callables: known after a call)."""
    if _keras_depth(model) is None:
        return None
    return model.output_shape[-1]


def _input_multiples(model):
    """(z, y, x) multiples a 3D model's input needs: the product of its pooling strides per axis.

    Other callables: their ``input_multiple`` attribute (an int or 3 ints), else 1.
    """
    if _keras_depth(model) is None:
        multiple = getattr(model, "input_multiple", None) or 1
        return tiling.per_axis("input_multiple", multiple, 3)
    import keras

    multiples = [1, 1, 1]
    for layer in model.layers:
        if isinstance(layer, (keras.layers.MaxPooling3D, keras.layers.AveragePooling3D)):
            multiples = [m * int(s) for m, s in zip(multiples, layer.strides)]
    return tuple(multiples)


def model_offsets_path(model_path):
    """The offsets sidecar of a model file: ``MODEL.offsets.json`` (``best.keras`` ->
    ``best.offsets.json``; a SavedModel folder ``saved`` -> ``saved.offsets.json``)."""
    path = Path(model_path)
    return path.with_name(path.stem + ".offsets.json") if path.suffix else \
        path.with_name(path.name + ".offsets.json")


def read_model_offsets(model_path):
    """Offsets recorded beside a model (``model_offsets_path``), or None without a sidecar.

    The sidecar is JSON: ``{"offsets": [[dz, dy, dx], ...]}`` (more keys are
    ignored) or the bare list.

    Raises:
        ValueError: an unreadable sidecar or bad offsets, naming the file.
    """
    import json

    sidecar = model_offsets_path(model_path)
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
        offsets = data["offsets"] if isinstance(data, dict) else data
        return affinity_tta.check_offsets(offsets)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"offsets file {sidecar}: {exc}") from None


def _resolve_offsets(offsets, model_path, channels):
    """Explicit ``offsets``, else the model's sidecar, else None; checked against ``channels``."""
    if offsets is None and model_path is not None:
        offsets = read_model_offsets(model_path)
        if offsets is None:
            return None
        try:
            return affinity_tta.check_offsets(offsets, channels)
        except ValueError as exc:
            raise ValueError(f"offsets file {model_offsets_path(model_path)}: {exc}") from None
    if offsets is None:
        return None
    return affinity_tta.check_offsets(offsets, channels)


def _run_to_end(steps):
    """Exhaust a generator and return its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _build_keras_function(model, tile, fold, variant):
    """The ``KerasFunction`` of ``variant``; its ``variant`` attribute is set to it."""
    function = KerasFunction(model, tile, fold=fold, jit_compile=variant.engine == "xla",
                             precision=variant.precision,
                             constant_weights=variant.engine == "frozen")
    function.variant = variant
    return function


def _keras_depth(model):
    """Pooling depth of a Keras model, or None for other callables."""
    try:
        import keras
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(model, keras.Model):
        return None
    from fusionnet_tf.models import model_depth

    return model_depth(model)


def _keras_input_multiple(model):
    """Input multiple of a Keras model (``models.input_multiple``), or None."""
    if _keras_depth(model) is None:
        return None
    from fusionnet_tf.models import input_multiple

    return input_multiple(model)


class _NullBar:
    def update(self, _):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress_bar(total, enabled):
    if not enabled:
        return _NullBar()
    import sys

    from tqdm import tqdm

    # off a terminal, tqdm prints every refresh on a new line: a bar drawn at 0/N before the
    # engine line would be drawn at 0/N again after it, so wait for the first refresh
    delay = 0 if sys.stderr.isatty() else 1e-9
    return tqdm(total=total, unit="tile", file=sys.stderr, desc="predict", delay=delay)


__all__ = ["Predictor", "PredictOptions", "load_model", "KerasFunction", "TTA_TRANSFORMS",
           "inputs_per_call", "network_calls",
           "check_precision_applies", "model_spatial_dims", "model_file_spatial_dims",
           "check_volume_for_3d_model",
           "read_model_offsets",
           "model_offsets_path"]
