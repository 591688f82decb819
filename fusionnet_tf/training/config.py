"""Training configuration: a nested dataclass loaded from YAML or JSON.

A config file is a mapping whose keys mirror :class:`TrainConfig`; anything
left out keeps its default. Command-line overrides use dotted keys
(``--set optimizer.learning_rate=3e-4 --set data.train_slices=0-19``); the
value is parsed as YAML and checked against the field's type, so a typo or a
wrong type fails at once with a one-line ``ValueError`` naming the key and the
value, before any data is read or any model is built.

Relative paths (data files, ``output_dir``) are resolved against the current
working directory of the process, not the config file's folder: run
``fusionnet train`` from the repository root to use
``training/configs/isbi2012.yaml`` as shipped.

Example:
>>> cfg = load_config("training/configs/isbi2012.yaml",
...                   overrides=["epochs=2", "optimizer.learning_rate=1e-4"])
>>> check_config(cfg)   # paths exist, tile sizes fit the model depth
"""

import dataclasses
import json
import re
import typing
from pathlib import Path

from fusionnet_tf.checks import check_choice, check_range, parse_slices  # noqa: F401
from fusionnet_tf.data.labels import LABEL_CONVENTIONS
from fusionnet_tf.data.normalize import NORMALIZATION_MODES as INTENSITY_MODES
from fusionnet_tf.training.strategy import PRECISIONS, STRATEGIES

ARCHITECTURES = ("fusionnet", "unet", "fcn8s", "fcn16s", "fcn32s", "fusionnet3d")
ARCHITECTURES_3D = ("fusionnet3d",)  # affinity models on (Z, Y, X) patches
FCN_INPUT_MULTIPLE = 32  # fusionnet_tf.models.fcn.INPUT_MULTIPLE (no Keras import here)
NORMALIZATIONS = ("batch", "group", "none")
LOSSES = ("bce", "dice", "bce_dice", "weighted_bce")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
MONITORS = ("val_loss", "val_dice", "loss", "dice")

SliceSpec = typing.Union[str, typing.List[int], None]


@dataclasses.dataclass
class ModelConfig:
    """Arguments of ``fusionnet_tf.models.build_model`` (see its docstring).

    The FCN architectures (``fcn8s``, ``fcn16s``, ``fcn32s``: VGG16 with a fixed
    depth of five poolings and no normalization) use ``base_filters``,
    ``fc_filters`` (width of fc6/fc7, null = 64 x base_filters) and ``dropout``
    and ignore ``depth``, ``residual_convs`` and ``normalization``;
    FusionNet and U-Net ignore ``fc_filters``.

    Fine-tuning (``fusionnet_tf.training.finetune``): ``init`` is a ``.keras``
    file or ``isbi2012`` (the shipped model) whose weights the run starts from
    (its architecture must match; not re-applied when a run resumes);
    ``freeze`` is ``none`` or ``encoder`` (the contracting path is not
    trained). With ``init`` set, ``optimizer.learning_rate`` defaults to 1e-4
    and ``optimizer.warmup_steps`` to 50 (``FINETUNE_DEFAULTS``) unless given
    explicitly: by ``--set``, or in the same config file that sets ``init``.
    """

    architecture: str = "fusionnet"
    base_filters: int = 16
    depth: int = 4
    residual_convs: int = 3
    dropout: float = 0.0
    normalization: str = "batch"
    fc_filters: typing.Optional[int] = None
    anisotropic_levels: int = 2  # fusionnet3d: levels with (1,3,3) kernels, (1,2,2) pooling
    init: typing.Optional[str] = None
    freeze: str = "none"


@dataclasses.dataclass
class DataConfig:
    """Where the training and validation stacks are and how to read them.

    Stacks are any spec ``fusionnet_tf.data.read_stack`` accepts (multi-page
    TIFF, folder of slices, ``file.h5:/key``). ``val_images``/``val_labels``
    default to the training files, so one stack can be split by slices.
    Slice specs are ``"0-19"``, ``"0,2,5-7"``, a list of ints, or null for all
    slices. ``val_slices: null`` with no ``val_images`` means no validation.

    ``label_convention``: ``isbi`` (0 = membrane), ``membrane`` (nonzero =
    membrane) or ``instance``: one id per cell, 2D or 3D (SNEMI3D: 0 = thin
    gap, ids often touch), turned into membrane targets
    ``boundary_width`` pixels wide: a pixel is membrane if its id is 0 or
    differs from its right/lower neighbour's nonzero id (one side of each
    touching pair, so the line is 1 px), dilated to ``boundary_width``
    (``fusionnet_tf.data.labels.instance_boundaries``). ``boundary_width``
    applies to ``instance`` labels only.
    """

    train_images: str = ""
    train_labels: str = ""
    val_images: typing.Optional[str] = None
    val_labels: typing.Optional[str] = None
    train_slices: SliceSpec = None
    val_slices: SliceSpec = None
    label_convention: str = "isbi"
    label_threshold: typing.Optional[float] = None
    boundary_width: int = 1
    normalization: str = "slice"
    tile_size: int = 256
    val_tile_size: typing.Optional[int] = None
    # fusionnet3d only: [Z, P, P] patches, affinity offsets [[dz, dy, dx], ...]
    # (null: fusionnet_tf.data.affinities.DEFAULT_OFFSETS_3D); labels are instance ids
    patch_shape: typing.Optional[typing.List[int]] = None
    val_patch_shape: typing.Optional[typing.List[int]] = None
    offsets: typing.Optional[typing.List[typing.List[int]]] = None


@dataclasses.dataclass
class LossConfig:
    """Loss: ``bce``, soft ``dice``, ``bce_dice`` or class-``weighted_bce``.

    ``membrane_weight`` multiplies the BCE of membrane pixels (label 1) in
    ``weighted_bce``; ``dice_weight`` scales the Dice term of ``bce_dice``.
    """

    name: str = "bce_dice"
    membrane_weight: float = 1.0
    dice_weight: float = 1.0
    smooth: float = 1.0


@dataclasses.dataclass
class OptimizerConfig:
    """Adam/AdamW and the learning-rate schedule.

    ``cosine`` decays from ``learning_rate`` to ``learning_rate * min_lr_ratio``
    over the whole run (``epochs * steps_per_epoch`` steps) after a linear
    warm-up of ``warmup_steps``. ``weight_decay`` applies to AdamW only.
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    clipnorm: typing.Optional[float] = None


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs; written next to its checkpoints.

    ``augment`` is a mapping of ``fusionnet_tf.data.AugmentConfig`` options
    (missing ones keep their defaults), ``true`` for the defaults or ``false``
    for none. ``batch_size`` is per replica unless ``batch_size_is_global`` is true (then
    it is split across replicas and must divide by their number).
    ``checkpoint_monitor`` picks ``best.keras`` (``val_loss`` lowest or
    ``val_dice`` highest). ``backup_every_steps`` is how often the resumable
    training state is written (also at every epoch end). ``isbi_eval_every``
    computes V_rand/V_info on whole validation slices every N epochs (0: off).
    ``early_stopping_patience`` 0 disables early stopping. ``fused_batchnorm``
    computes BatchNormalization with TensorFlow's fused kernel (same layers,
    weights and maths; float32, mixed_bfloat16 and mixed_float16 alike;
    CPU training steps 1.25-1.8x faster than Keras's BatchNormalization; see
    ``fusionnet_tf.training.fused_batchnorm``). ``intra_op_threads``
    / ``inter_op_threads`` 0 keep TensorFlow's defaults.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: typing.Union[bool, typing.Dict[str, typing.Any]] = dataclasses.field(
        default_factory=dict)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    epochs: int = 50
    steps_per_epoch: int = 100
    validation_steps: typing.Optional[int] = None
    batch_size: int = 4
    batch_size_is_global: bool = False
    precision: str = "float32"
    jit_compile: bool = False
    fused_batchnorm: bool = True
    steps_per_execution: int = 1
    strategy: str = "default"
    seed: int = 0
    output_dir: str = "runs/fusionnet"
    checkpoint_monitor: str = "val_loss"
    backup_every_steps: int = 25
    early_stopping_patience: int = 0
    isbi_eval_every: int = 0
    tensorboard: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 0


# ---------------------------------------------------------------- type checks


def _type_name(annotation):
    if annotation is typing.Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, typing.List):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin in (dict, typing.Dict):
        return "mapping"
    if annotation is type(None):
        return "null"
    return annotation.__name__


def _coerce(key, value, annotation):
    """Return ``value`` checked (and, for numbers, converted) to ``annotation``.

    Ints are accepted for float fields, and numeric strings such as ``1e-3``
    (which YAML 1.1 reads as a string) for float and int fields.

    Raises:
        ValueError: naming ``key``, the expected type and the value received.
    """
    if annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        for option in typing.get_args(annotation):
            try:
                return _coerce(key, value, option)
            except ValueError:
                continue
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin in (list, typing.List):
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    elif origin in (dict, typing.Dict):
        if isinstance(value, dict):
            return dict(value)
    raise ValueError(
        f"config key '{key}' must be {_type_name(annotation)}; received "
        f"{value!r} (of type {type(value).__name__})"
    )


def _build(cls, mapping, prefix=""):
    """Instantiate dataclass ``cls`` from ``mapping``, checking keys and types."""
    if not isinstance(mapping, dict):
        where = f"config key '{prefix.rstrip('.')}'" if prefix else "the config"
        raise ValueError(f"{where} must be a mapping; received {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ValueError(
                f"unknown config key '{key}' (valid keys here: {', '.join(fields)})"
            )
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, prefix=f"{key}.")
        else:
            kwargs[name] = _coerce(key, value, annotation)
    return cls(**kwargs)


# ---------------------------------------------------------------- public API


def config_from_dict(mapping):
    """Build a :class:`TrainConfig` from a (nested) mapping.

    Args:
        mapping: dict with :class:`TrainConfig` keys; nested dicts for
            ``model``, ``data``, ``loss``, ``optimizer``; missing keys keep
            their defaults.

    Returns:
        TrainConfig, with value choices checked (see :func:`check_values`).

    Raises:
        ValueError: unknown key, wrong type or invalid choice, naming the key.
    """
    config = _build(TrainConfig, apply_finetune_defaults(mapping or {}))
    check_values(config)
    return config


def apply_finetune_defaults(mapping, explicit=None):
    """A copy of ``mapping`` with the fine-tuning optimizer defaults when ``model.init`` is set.

    Args:
        mapping: nested config dict.
        explicit: set of dotted keys (``"optimizer.learning_rate"``) the user
            set on purpose; None: the optimizer keys present in ``mapping``.

    Returns:
        dict; ``optimizer.learning_rate`` / ``optimizer.warmup_steps`` set to
        ``FINETUNE_DEFAULTS`` unless explicit. Unchanged without ``model.init``.
    """
    from fusionnet_tf.training.finetune import FINETUNE_DEFAULTS

    model = mapping.get("model") if isinstance(mapping, dict) else None
    if not isinstance(model, dict) or not model.get("init"):
        return mapping
    mapping = dict(mapping)
    optimizer = dict(mapping.get("optimizer") or {})
    if explicit is None:
        explicit = {f"optimizer.{key}" for key in optimizer}
    for key, value in FINETUNE_DEFAULTS.items():
        if f"optimizer.{key}" not in explicit:
            optimizer[key] = value
    mapping["optimizer"] = optimizer
    return mapping


def config_to_dict(config):
    """Plain nested dict of ``config`` (YAML/JSON serialisable)."""
    return dataclasses.asdict(config)


def parse_override(text):
    """Split ``"a.b=value"`` into ``(["a", "b"], parsed value)``.

    The value is parsed as YAML: ``3`` is an int, ``true`` a bool, ``[1, 2]``
    a list, ``null`` None, anything else a string.

    Raises:
        ValueError: if ``text`` has no ``=`` or an empty key.
    """
    import yaml

    if "=" not in text:
        raise ValueError(f"--set expects KEY=VALUE; received {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects KEY=VALUE with a dotted key; received {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(mapping, overrides):
    """Return a copy of ``mapping`` with dotted ``KEY=VALUE`` overrides applied.

    Args:
        mapping: nested dict (as read from a config file).
        overrides: iterable of strings like ``"optimizer.learning_rate=3e-4"``.

    Returns:
        A new nested dict. Keys are checked later by :func:`config_from_dict`;
        an override of ``augment.X`` sets one augmentation option.

    Raises:
        ValueError: malformed override.
    """
    result = json.loads(json.dumps(mapping or {}))
    for text in overrides or ():
        parts, value = parse_override(text)
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(
                    f"--set {text!r}: config key '{part}' is not a section "
                    f"(it holds {child!r})"
                )
            node = child
        node[parts[-1]] = value
    return result


def read_config_file(path):
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) config file to a dict.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be parsed or is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            mapping = json.loads(text)
        else:
            mapping = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot parse config file {path}: {first_line}") from None
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ValueError(f"config file {path} must hold a mapping; received {mapping!r}")
    return mapping


def load_config(path=None, overrides=()):
    """Load a config file (or the defaults) and apply ``KEY=VALUE`` overrides.

    Args:
        path: str or Path of a ``.yaml``/``.yml``/``.json`` file, or None for
            the defaults.
        overrides: iterable of ``"dotted.key=value"`` strings.

    Returns:
        TrainConfig.

    Raises:
        FileNotFoundError: missing config file.
        ValueError: unparsable file, unknown key, wrong type or bad choice.

    Example:
    >>> cfg = load_config("training/configs/smoke.yaml", ["epochs=1"])
    """
    mapping = read_config_file(path) if path is not None else {}
    # fine-tuning defaults yield to --set, and to the optimizer of a file that sets init itself
    explicit = {".".join(parse_override(text)[0]) for text in overrides or ()}
    if isinstance(mapping.get("model"), dict) and mapping["model"].get("init"):
        explicit |= {f"optimizer.{key}" for key in (mapping.get("optimizer") or {})}
    merged = apply_overrides(mapping, overrides)
    return config_from_dict(apply_finetune_defaults(merged, explicit))


def save_config(config, path):
    """Write ``config`` as YAML to ``path`` atomically."""
    import yaml

    from fusionnet_tf.io.outputs import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ---------------------------------------------------------------- checks


def _check_min(key, value, minimum):
    if value is not None and value < minimum:
        raise ValueError(f"config key '{key}' must be >= {minimum}; received {value!r}")


def check_values(config):
    """Check choices and ranges of ``config`` (no file system access).

    Raises:
        ValueError: naming the first bad key and its value.
    """
    m, d, lo, op = config.model, config.data, config.loss, config.optimizer
    check_choice("config key 'model.architecture'", m.architecture, ARCHITECTURES)
    check_choice("config key 'model.normalization'", m.normalization, NORMALIZATIONS)
    _check_min("model.base_filters", m.base_filters, 1)
    _check_min("model.depth", m.depth, 1)
    _check_min("model.residual_convs", m.residual_convs, 1)
    _check_min("model.fc_filters", m.fc_filters, 1)
    check_choice("config key 'model.freeze'", m.freeze, ("none", "encoder"))
    check_range("config key 'model.dropout'", m.dropout, 0, 1, open_high=True)
    check_choice("config key 'data.label_convention'", d.label_convention, LABEL_CONVENTIONS)
    _check_min("data.boundary_width", d.boundary_width, 1)
    check_choice("config key 'data.normalization'", d.normalization, INTENSITY_MODES)
    _check_min("data.tile_size", d.tile_size, 1)
    _check_min("data.val_tile_size", d.val_tile_size, 1)
    check_choice("config key 'loss.name'", lo.name, LOSSES)
    _check_min("loss.membrane_weight", lo.membrane_weight, 0.0)
    _check_min("loss.dice_weight", lo.dice_weight, 0.0)
    _check_min("loss.smooth", lo.smooth, 0.0)
    check_choice("config key 'optimizer.name'", op.name, OPTIMIZERS)
    check_choice("config key 'optimizer.schedule'", op.schedule, SCHEDULES)
    if not op.learning_rate > 0:
        raise ValueError(
            f"config key 'optimizer.learning_rate' must be > 0; received {op.learning_rate!r}"
        )
    _check_min("optimizer.weight_decay", op.weight_decay, 0.0)
    _check_min("optimizer.warmup_steps", op.warmup_steps, 0)
    check_range("config key 'optimizer.min_lr_ratio'", op.min_lr_ratio, 0, 1)
    if op.clipnorm is not None and not op.clipnorm > 0:
        raise ValueError(f"config key 'optimizer.clipnorm' must be > 0; received {op.clipnorm!r}")
    check_choice("config key 'precision'", config.precision, PRECISIONS)
    check_choice("config key 'strategy'", config.strategy, STRATEGIES)
    check_choice("config key 'checkpoint_monitor'", config.checkpoint_monitor, MONITORS)
    for key in ("epochs", "steps_per_epoch", "batch_size", "steps_per_execution",
                "backup_every_steps"):
        _check_min(key, getattr(config, key), 1)
    for key in ("validation_steps",):
        _check_min(key, getattr(config, key), 1)
    for key in ("early_stopping_patience", "isbi_eval_every", "intra_op_threads",
                "inter_op_threads"):
        _check_min(key, getattr(config, key), 0)
    if not config.output_dir:
        raise ValueError("config key 'output_dir' must not be empty")


def input_multiple(model_config):
    """Side multiple the configured model needs: 32 for an FCN, else ``2**depth``."""
    if model_config.architecture.startswith("fcn"):
        return FCN_INPUT_MULTIPLE
    return 2**model_config.depth


def _check_divisible(key, size, model_config):
    multiple = input_multiple(model_config)
    if size is None or not size % multiple:
        return
    if model_config.architecture.startswith("fcn"):
        reason = f"{multiple} (model.architecture={model_config.architecture!r})"
    else:
        reason = f"2**model.depth = {multiple} (model.depth={model_config.depth})"
    raise ValueError(f"config key '{key}' must be a multiple of {reason}; received {size!r}")


def _stack_path(spec):
    """File-system part of a stack spec (``file.h5:/key`` -> ``file.h5``; ``io.spec``)."""
    from fusionnet_tf.io.spec import parse_spec

    try:
        return parse_spec(spec).path
    except ValueError:  # an unknown extension: the readers name it
        return Path(str(spec))


def check_config(config):
    """Check everything that can fail before training: values, sizes, paths.

    Run this before reading data or building the model, so a bad config ends
    the run in under a second with one clear line.

    Raises:
        ValueError: bad value, tile size not a multiple of ``input_multiple``,
            validation slices given without a stack, missing ``train_images``.
        FileNotFoundError: a data path that does not exist, naming its key.
    """
    check_values(config)
    if is_3d(config):
        check_config_3d(config)
    else:
        check_augment(config.augment)
    d = config.data
    _check_divisible("data.tile_size", d.tile_size, config.model)
    _check_divisible("data.val_tile_size", d.val_tile_size, config.model)
    for key in ("train_images", "train_labels"):
        if not getattr(d, key):
            raise ValueError(f"config key 'data.{key}' is required (a stack path); received ''")
    for key in ("train_images", "train_labels", "val_images", "val_labels"):
        spec = getattr(d, key)
        if spec is not None and not _stack_path(spec).exists():
            raise FileNotFoundError(f"config key 'data.{key}': no such file or folder: {spec}")
    if (d.val_images is None) != (d.val_labels is None):
        raise ValueError(
            "config keys 'data.val_images' and 'data.val_labels' must be given together; "
            f"received val_images={d.val_images!r}, val_labels={d.val_labels!r}"
        )
    if config.isbi_eval_every and not has_validation(config):
        raise ValueError(
            f"config key 'isbi_eval_every'={config.isbi_eval_every} needs validation data "
            "(set data.val_slices or data.val_images)"
        )
    if config.checkpoint_monitor.startswith("val_") and not has_validation(config):
        raise ValueError(
            f"config key 'checkpoint_monitor'={config.checkpoint_monitor!r} needs validation "
            "data (set data.val_slices or data.val_images, or monitor 'loss')"
        )


def check_augment(augment, volume=False):
    """Check the ``augment`` section against its dataclass (imports TensorFlow).

    Args:
        augment: the config's ``augment`` mapping or dataclass.
        volume: bool. A 3D (``fusionnet3d``) run: ``Augment3DConfig``;
            otherwise ``AugmentConfig``.

    Raises:
        ValueError: unknown option or bad value, prefixed with the config key.
    """
    if volume:
        from fusionnet_tf.data.pipeline3d import as_augment3d_config as as_config
    else:
        from fusionnet_tf.data.augment import as_augment_config as as_config

    try:
        return as_config(augment)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config key 'augment': {exc}") from None


def has_validation(config):
    """True if ``config`` defines validation data (other file or slices)."""
    return config.data.val_images is not None or config.data.val_slices is not None


# ---------------------------------------------------------------- 3D affinity models


def is_3d(config):
    """True if ``config`` trains a 3D affinity model (``model.architecture`` in ARCHITECTURES_3D)."""
    return config.model.architecture in ARCHITECTURES_3D


def affinity_offsets(config):
    """The configured offsets as (dz, dy, dx) tuples (``DEFAULT_OFFSETS_3D`` when null)."""
    from fusionnet_tf.data.affinities import DEFAULT_OFFSETS_3D, check_offsets

    if config.data.offsets is None:
        return DEFAULT_OFFSETS_3D
    try:
        return check_offsets(config.data.offsets)
    except ValueError:
        raise ValueError("config key 'data.offsets' must be a list of [dz, dy, dx] int triples "
                         f"other than [0, 0, 0]; received {config.data.offsets!r}") from None


def patch_multiple(model_config):
    """(z, y, x) multiples of a fusionnet3d patch: 2**isotropic levels, 2**depth, 2**depth."""
    isotropic = max(model_config.depth - model_config.anisotropic_levels, 0)
    return (2**isotropic, 2**model_config.depth, 2**model_config.depth)


def check_config_3d(config):
    """The fusionnet3d-specific checks: patch shapes, offsets, loss, augmentation.

    Raises:
        ValueError: naming the key and its value.
    """
    m, d = config.model, config.data
    if not 0 <= m.anisotropic_levels <= m.depth:
        raise ValueError("config key 'model.anisotropic_levels' must be in [0, model.depth="
                         f"{m.depth}]; received {m.anisotropic_levels!r}")
    multiple = patch_multiple(m)
    for key in ("patch_shape", "val_patch_shape"):
        shape = getattr(d, key)
        if shape is None and key == "val_patch_shape":
            continue
        if (shape is None or len(shape) != 3 or shape[1] != shape[2]
                or any(s < 1 or s % k for s, k in zip(shape, multiple))):
            raise ValueError(
                f"config key 'data.{key}' must be [Z, P, P] with Z a multiple of {multiple[0]} "
                f"and P of {multiple[1]} (model.depth={m.depth}, model.anisotropic_levels="
                f"{m.anisotropic_levels}); received {shape!r}")
    affinity_offsets(config)
    from fusionnet_tf.training.losses import AFFINITY_LOSSES

    check_choice("config key 'loss.name'", config.loss.name, AFFINITY_LOSSES,
                 f"for {m.architecture}")
    if config.isbi_eval_every:
        raise ValueError(f"config key 'isbi_eval_every' must be 0 for {m.architecture} "
                         f"(2D membrane scores); received {config.isbi_eval_every!r}")
    if config.checkpoint_monitor in ("dice", "val_dice"):
        raise ValueError(f"config key 'checkpoint_monitor' must be 'loss' or 'val_loss' for "
                         f"{m.architecture}; received {config.checkpoint_monitor!r}")
    check_augment(config.augment, volume=True)
