"""``PredictOptions``: the one home of the overlap-tile prediction options.

Every way to predict takes these options: ``Predictor``, ``predict_volume``,
the block-wise workers (``volumes.blockwise.PredictorSpec``), ``fusionnet
predict`` / ``predict-volume`` and the napari "Predict membranes" widget.
Each option has one default and one description, here: the command-line
options (``add_arguments``) and the widget's parameters (``widget_parameters``)
are generated from the fields, so their defaults and help cannot drift apart.

Pure Python (no NumPy, no TensorFlow): building the CLI parser imports it.
"""

import argparse
import dataclasses

from fusionnet_tf.checks import check_choice, check_int
from fusionnet_tf.choices import (BLENDINGS, ENGINES, INFERENCE_PRECISION_CHOICES,
                                  NORMALIZATION_MODES, TTA_TRANSFORMS, TTA_TRANSFORMS_3D)

# 3D models: tiles of an int ``tile_shape`` T are (tile_z, T, T) (default DEFAULT_TILE_Z), and
# an int ``overlap`` O overlaps them by (overlap_z, else tile depth // Z_OVERLAP_FRACTION, O, O)
DEFAULT_TILE_Z = 16
Z_OVERLAP_FRACTION = 4
TTA_CHOICES = tuple(sorted(set(TTA_TRANSFORMS) | set(TTA_TRANSFORMS_3D)))
# the command-line group of the options that apply to 3D affinity models only
THREE_D_GROUP = "3D affinity models (input (B, Z, Y, X, 1))"
# the parsed arguments' attribute naming the options given on the command line (a set of dests)
GIVEN = "given_prediction_options"


def _option(default, help, flag, **extra):
    """A field with its command-line ``flag``, ``help`` (meaning, unit, default) and extras.

    ``extra`` may hold ``type`` and ``choices`` (argparse), ``default_text``
    (the default as the help shows it), ``group`` (the command-line group,
    e.g. ``THREE_D_GROUP``: only 3D models take the option) and ``widget``
    (magicgui options, or None: not in the napari widget).
    """
    return dataclasses.field(default=default,
                             metadata={"help": help, "flag": flag, **extra})


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How an image is normalized, cut into tiles, predicted, augmented and blended.

    Frozen and hashable: a worker caches its Predictor per options. Build
    one with keywords (``PredictOptions(tta=1)``), change one with
    ``replace``; invalid values raise a one-line ``ValueError`` naming the
    option. ``tile_shape``, ``overlap`` and ``align`` also take one int per
    axis, ``(z, y, x)`` for a 3D model (``(T, T)`` for a 2D tile); then
    ``tile_z`` / ``overlap_z`` are not used. ``normalization`` is applied by
    the entry points that read raw data (``fusionnet predict`` /
    ``predict-volume``, ``predict_volume``, the napari widget);
    ``Predictor.predict`` takes images already in [0, 1]. The
    attributes are below (each with its meaning, unit and default); each
    field's text is also its command-line help and the widget's tooltip.

    Example:
    >>> PredictOptions(tile_shape=256).replace(tta=1).tile(2)
    (256, 256)
    """

    tile_shape: object = _option(
        512, "Tile side in pixels, a multiple of the model's input multiple (2**depth: 16 "
             "for FusionNet/U-Net depth 4, 32 for FCN): (T, T) tiles, for a 3D model "
             "(--tile-z, T, T).",
        "--tile-size", type=int, widget={"label": "tile size", "min": 16, "max": 4096,
                                         "step": 16})
    overlap: object = _option(
        64, "Minimum overlap of neighbouring tiles in pixels (y and x); for a 3D model "
            "--overlap-z along z.",
        "--overlap", type=int, widget={"min": 0, "max": 2048, "step": 8})
    tta: int = _option(
        8, "Test-time augmentation: 1 = none, 4 = mirrorings, 8 = all rotations and flips; "
           "for 3D affinity models also 2 = z-flip and 16 = 8 x z-flip (their offsets must "
           "be known).",
        "--tta", type=int, choices=TTA_CHOICES,
        widget={"label": "TTA", "tooltip": "Test-time augmentation: 1 none, 4 mirrorings, "
                                           "8 all rotations/flips (3D also 2, 16)."})
    batch_size: object = _option(
        None, "Network inputs (tiles x TTA variants) per call; every call is padded to it.",
        "--batch-size", type=int,
        default_text="the TTA variants of as few tiles as make ~256x256 pixels, at most one "
                     "slice's tiles: one 512 px tile, 16 tiles of 64 px without TTA; 1 for 3D "
                     "models", widget=None)
    blending: str = _option(
        "gaussian", "Tile blending weights: gaussian (sigma = tile / 8), cosine or constant.",
        "--blending", choices=BLENDINGS, widget={})
    align: object = _option(
        None, "Tile origins (but the last along each axis) are multiples of this, in pixels.",
        "--align", type=int,
        default_text="the input multiple of a Keras model, package, .onnx or .tflite file, 1 "
                     "for a SavedModel or serving endpoint", widget=None)
    engine: str = _option(
        "auto", "How a Keras model runs: plain (BatchNorm folded, oneDNN), frozen (plain "
                "with the weights as graph constants: for wide models faster per call but "
                "seconds longer to start, e.g. base 64: ~13% faster, +7-13 s; base 16: 0-5%, "
                "+0.2 s), xla (also compiled with XLA: on a CPU faster for wide models, "
                "slower for narrow ones, compiles for seconds) or auto: on the first batch "
                "time the eligible variants (plain, frozen, xla, and bfloat16 with precision "
                "auto), keep the fastest for the job, start-up included, and cache the "
                "timings per model, tile and machine (in $FUSIONNET_TF_CACHE_DIR or "
                "~/.cache/fusionnet-tf); a job under 8 calls (e.g. one slice) runs plain, "
                "untimed; one under 5 s runs on the first variant tried; 3D models are not "
                "timed (auto runs them frozen in float32). Other models run as exported.",
        "--engine", choices=ENGINES,
        widget={"tooltip": "auto: on long jobs, times plain, frozen and XLA and keeps the "
                           "fastest (the choice is cached); plain: TensorFlow's oneDNN kernels; "
                           "frozen: the same with the weights as constants (faster calls for "
                           "wide models, slower start); xla: compiled with XLA."})
    precision: str = _option(
        "float32", "Compute precision of a Keras model: mixed_bfloat16 is several times "
                   "faster on CPUs with bfloat16 matrix instructions (AMX: about 7x; "
                   "AVX512-BF16: about 2x) and on GPUs, and changes probabilities by ~1e-3 "
                   "on average; mixed_float16 is for GPUs; auto lets engine auto also time "
                   "mixed_bfloat16 where the machine has those units. Other models run in "
                   "the precision they were exported with.",
        "--precision", choices=INFERENCE_PRECISION_CHOICES, widget={})
    tile_z: int = _option(
        DEFAULT_TILE_Z, "Tile depth in sections of a 3D model; --tile-size is the tile's height "
                        "and width.",
        "--tile-z", type=int, group=THREE_D_GROUP,
        widget={"label": "tile z", "min": 1, "max": 512,
                "tooltip": "3D models: sections per tile (the z overlap is a quarter of it), "
                           "as fusionnet predict --tile-z (default: 16)."})
    overlap_z: object = _option(
        None, "Minimum overlap of the tiles of a 3D model along z, in sections; --overlap is "
              "the in-plane one.",
        "--overlap-z", type=int, group=THREE_D_GROUP,
        default_text="a quarter of the tile depth, rounded down",
        widget=None)
    normalization: str = _option(
        "slice", "Intensity normalization of the input to [0, 1] before prediction: slice "
                 "(min-max per slice, or per section of a volume), global (min-max over the "
                 "whole stack or volume) or dtype (the dtype's range: 0-255 for uint8; float "
                 "input is taken as already in [0, 1]).",
        "--normalization", choices=NORMALIZATION_MODES, widget={})

    def __post_init__(self):
        for name, minimum in (("tile_shape", 1), ("overlap", 0), ("align", 1)):
            value = getattr(self, name)
            if value is not None or name != "align":  # ints; lists (JSON) as tuples
                object.__setattr__(self, name, _sides(name, value, minimum))
        check_choice("tta", self.tta, TTA_CHOICES)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        check_choice("blending", self.blending, BLENDINGS)
        check_choice("engine", self.engine, ENGINES)
        check_choice("precision", self.precision, INFERENCE_PRECISION_CHOICES)
        check_choice("normalization", self.normalization, NORMALIZATION_MODES)
        check_int("tile_z", self.tile_z, 1)
        if self.overlap_z is not None:
            check_int("overlap_z", self.overlap_z, 0)
        if isinstance(self.tile_shape, int) and isinstance(self.overlap, int) \
                and self.overlap >= self.tile_shape:
            raise ValueError(f"`overlap` must be less than `tile_shape` {self.tile_shape} so "
                             f"that tiles advance; received overlap={self.overlap}")
        self._check_overlap_z()

    def _check_overlap_z(self):
        """Refuse an ``overlap_z`` that is not below the tile depth it applies to (one line)."""
        if self.overlap_z is None or not isinstance(self.overlap, int):
            return  # not given, or the overlap gives every axis itself
        if isinstance(self.tile_shape, int):
            depth, name = self.tile_z, "`tile_z`"
        elif len(self.tile_shape) == 3:
            depth, name = self.tile_shape[0], "the tile depth"
        else:
            return  # a 2D tile: a 2D model does not use it
        if self.overlap_z >= depth:
            raise ValueError(f"`overlap_z` must be less than {name} {depth} so that tiles "
                             f"advance; received overlap_z={self.overlap_z}")

    # === Resolution per model ===

    def tile(self, spatial_dims):
        """Tile sides for a 2D or 3D model: ``(T, T)`` or ``(tz, ty, tx)``.

        Raises:
            ValueError: a 2D tile that is not square, or sides for another
                number of axes.
        """
        tile = self.tile_shape
        if isinstance(tile, int):
            return (tile, tile) if spatial_dims == 2 else (self.tile_z, tile, tile)
        if spatial_dims == 2 and len(tile) == 2 and tile[0] != tile[1]:
            raise ValueError(f"`tile_shape` must be square; received tile_shape={tile!r}")
        if len(tile) != spatial_dims:
            raise ValueError(f"`tile_shape` must be an int or {spatial_dims} ints for this "
                             f"{spatial_dims}D model; received tile_shape={tile!r}")
        return tuple(tile)

    def overlaps(self, spatial_dims):
        """Minimum overlap per axis: ``(O, O)``; for an int on 3D ``(overlap_z, O, O)``,
        without ``overlap_z`` ``(tile depth // 4, O, O)``."""
        overlap = self.overlap
        if not isinstance(overlap, int):
            if len(overlap) != spatial_dims:
                raise ValueError(f"`overlap` must be an int or {spatial_dims} ints for this "
                                 f"{spatial_dims}D model; received overlap={overlap!r}")
            return tuple(overlap)
        if spatial_dims == 2:
            return overlap, overlap
        if self.overlap_z is not None:
            return self.overlap_z, overlap, overlap
        return self.tile(3)[0] // Z_OVERLAP_FRACTION, overlap, overlap

    # === Conversions ===

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated like the constructor).

        Raises:
            ValueError: an unknown option, naming it, or a bad value.
        """
        _check_known(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """Plain dict of all options (JSON-able: tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values, source="prediction options"):
        """Build from a dict; unknown keys or bad values raise ``ValueError`` naming ``source``."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of options, received "
                             f"{type(values).__name__}")
        _check_known(values, source)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def given(cls, options=None, **changes):
        """``options`` (default ``PredictOptions()``) with keyword ``changes``.

        What ``Predictor`` and ``predict_volume`` do with their arguments:
        ``Predictor(model, tta=1)`` is ``Predictor(model, PredictOptions(tta=1))``.
        """
        if options is not None and not isinstance(options, cls):
            raise ValueError(f"`options` must be a PredictOptions; received options of type "
                             f"{type(options).__name__}")
        return (options or cls()).replace(**changes) if changes else (options or cls())


def _sides(name, value, minimum):
    """``value`` as an int >= ``minimum``, or a tuple of 2 or 3 of them (from a tuple or list).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    if isinstance(value, (tuple, list)):
        if len(value) not in (2, 3):
            raise ValueError(f"`{name}` must be an int, (y, x) or (z, y, x); received "
                             f"{name}={value!r}")
        return tuple(check_int(name, side, minimum) for side in value)
    return check_int(name, value, minimum)


def _check_known(values, source=None):
    """Refuse keys of ``values`` that are no option, naming them (and ``source``)."""
    known = [field.name for field in dataclasses.fields(PredictOptions)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}unknown prediction option(s) {unknown}; known: {known}")


# === Generated command-line options and widget parameters ===

def dest(field):
    """The argparse destination (and widget parameter name) of a field: ``tile_size``."""
    return field.metadata["flag"][2:].replace("-", "_")


def help_text(field):
    """The field's help with its default: ``"... (default: 512)."``."""
    default = field.metadata.get("default_text", field.default)
    return f"{field.metadata['help'].rstrip('.')} (default: {default})."


class _StoreGiven(argparse.Action):
    """Store the value and note the option as given (``given_flags``): a 2D model refuses
    the 3D-only options when they were typed, whatever their value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, set(getattr(namespace, GIVEN, ())) | {self.dest})


def add_arguments(parser):
    """Add one option per field to ``parser`` (``--tile-size``, ``--tta``, ...).

    Defaults, types, choices and help come from the fields; argparse's help
    escapes ``%``. Fields with a ``group`` go into an argument group of that
    title (``--tile-z`` and ``--overlap-z`` into ``THREE_D_GROUP``).

    Returns:
        ``{title: argument group}`` of the groups made (a command adds its
        own options of the same kind there, e.g. ``--offsets``).
    """
    groups = {}
    for field in dataclasses.fields(PredictOptions):
        title = field.metadata.get("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        extra = {k: field.metadata[k] for k in ("type", "choices") if k in field.metadata}
        groups.get(title, parser).add_argument(
            field.metadata["flag"], default=field.default, action=_StoreGiven,
            help=help_text(field).replace("%", "%%"), **extra)
    return groups


def given_flags(args):
    """``{field name: flag}`` of the options typed on the command line (``add_arguments``)."""
    typed = getattr(args, GIVEN, set())
    return {field.name: field.metadata["flag"] for field in dataclasses.fields(PredictOptions)
            if dest(field) in typed}


def three_d_flags(args):
    """The flags of the 3D-only options (``THREE_D_GROUP``) given on the command line."""
    fields = {field.name: field for field in dataclasses.fields(PredictOptions)}
    return [flag for name, flag in given_flags(args).items()
            if fields[name].metadata.get("group") == THREE_D_GROUP]


def from_args(args, **changes):
    """``PredictOptions`` of parsed arguments (``add_arguments``), with ``changes``."""
    values = {field.name: getattr(args, dest(field))
              for field in dataclasses.fields(PredictOptions)}
    return PredictOptions(**{**values, **changes})


def flags():
    """``{field name: (argparse dest, flag)}``: how a command names each option in errors."""
    return {field.name: (dest(field), field.metadata["flag"])
            for field in dataclasses.fields(PredictOptions)}


def widget_fields():
    """The fields the napari widget shows (those with ``widget`` options), in order."""
    return [field for field in dataclasses.fields(PredictOptions)
            if field.metadata.get("widget") is not None]


def widget_parameters():
    """``[(name, type, default)]`` of the widget's option parameters (named like the flags)."""
    return [(dest(field), type(field.default), field.default) for field in widget_fields()]


def widget_options():
    """magicgui ``param_options`` of the widget's option parameters (choices from the fields)."""
    options = {}
    for field in widget_fields():
        entry = dict(field.metadata["widget"])
        if "choices" in field.metadata:
            entry["choices"] = list(field.metadata["choices"])
        entry.setdefault("tooltip", help_text(field))
        options[dest(field)] = entry
    return options


def from_widget(values, **changes):
    """``PredictOptions`` from the widget's values (named like the flags), with ``changes``."""
    names = {dest(field): field.name for field in widget_fields()}
    return PredictOptions(**{names[k]: v for k, v in values.items() if k in names}, **changes)


def _document_fields():
    """Append each field's help to the class docstring (one description per option)."""
    lines = ["", "    Attributes:"]
    for field in dataclasses.fields(PredictOptions):
        lines.append(f"        {field.name} ({field.metadata['flag']}): {help_text(field)}")
    PredictOptions.__doc__ += "\n".join(lines) + "\n"


_document_fields()

__all__ = ["PredictOptions", "DEFAULT_TILE_Z", "add_arguments", "from_args", "widget_parameters",
           "widget_options", "from_widget", "flags", "given_flags", "three_d_flags"]
