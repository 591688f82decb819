"""Fine-tuning: start a training run from a trained model's weights, optionally with a frozen encoder.

``model.init`` (``fusionnet train --init``) names a ``.keras`` file or a
shipped model by its registry name (``isbi2012``, ``snemi3d``; see
``fusionnet_tf.pretrained``). The
freshly built model must have the same architecture: the same layers in the
same order, of the same classes with the same weight shapes; the first layer
that differs is named in a one-line ``ValueError``. Its weights (BatchNorm
moving statistics included) are then copied layer by layer, so the first
training step starts from the given model's outputs.

The weights are copied only when a run starts: a run that resumes from its
backup keeps its own weights (``fusionnet_tf.training.run.train``).

``model.freeze: encoder`` sets ``trainable = False`` on the encoder's layers
before the model is compiled (FusionNet / U-Net: ``enc*``, the contracting
path up to the bridge, which stays trainable; FCN: the VGG ``block*`` layers).
Frozen BatchNormalization layers then normalize with their moving statistics
and do not update them (Keras semantics; the fused kernel of
``fusionnet_tf.training.fused_batchnorm`` only runs on trainable layers), so
the encoder's weights stay bit-identical.

Fine-tuning defaults: when ``model.init`` is set, ``optimizer.learning_rate``
is ``FINETUNE_DEFAULTS["learning_rate"]`` (1e-4, a tenth of the from-scratch
default) and ``optimizer.warmup_steps`` is 50, unless they are set explicitly
(see ``fusionnet_tf.training.config.apply_finetune_defaults``).
"""

from pathlib import Path

from fusionnet_tf.checks import check_choice

FREEZE_CHOICES = ("none", "encoder")
# optimizer keys and their values when fine-tuning (model.init set) and not set explicitly
FINETUNE_DEFAULTS = {"learning_rate": 1e-4, "warmup_steps": 50}
# architecture -> name prefixes of its encoder layers
ENCODER_PREFIXES = {"fcn8s": ("block",), "fcn16s": ("block",), "fcn32s": ("block",)}
DEFAULT_ENCODER_PREFIXES = ("enc",)


def shipped_models():
    """The names that ``model.init`` accepts: the registry of ``fusionnet_tf.pretrained``."""
    from fusionnet_tf.pretrained import REGISTRY

    return tuple(REGISTRY)


def resolve_init(spec):
    """Path of the ``model.init`` file: a shipped name (``isbi2012``, ``snemi3d``) or a path.

    Raises:
        FileNotFoundError: neither a shipped name nor an existing file, naming both.
    """
    from fusionnet_tf.pretrained import REGISTRY, pretrained_path

    if spec in REGISTRY:
        return pretrained_path(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model.init {spec}: no such file, and not a shipped model "
                                f"name ({', '.join(shipped_models())})")
    return path


def load_init_model(spec):
    """Load the ``model.init`` model (uncompiled).

    Raises:
        FileNotFoundError: see ``resolve_init``.
        ValueError: the file is not a Keras model, in one line.
    """
    import keras

    path = resolve_init(spec)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any failure to load means "not a model"
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(f"model.init {spec}: not a Keras model file ({reason})") from None


def _describe(layer):
    shapes = [tuple(weight.shape) for weight in layer.weights]
    return f"'{layer.name}' ({type(layer).__name__}, weights {shapes})"


def first_mismatch(model, other):
    """Text naming the first layer where ``model`` and ``other`` differ, or None if they match.

    Layers are compared in order by class and weight shapes (names may differ).
    """
    for index, (ours, theirs) in enumerate(zip(model.layers, other.layers)):
        same_class = type(ours).__name__ == type(theirs).__name__
        same_shapes = ([tuple(w.shape) for w in ours.weights]
                       == [tuple(w.shape) for w in theirs.weights])
        if not (same_class and same_shapes):
            return f"layer {index} {_describe(ours)} is {_describe(theirs)} in the init model"
    if len(model.layers) != len(other.layers):
        shorter = min(len(model.layers), len(other.layers))
        longer = model if len(model.layers) > shorter else other
        where = "the configured model" if longer is model else "the init model"
        return (f"layer {shorter} {_describe(longer.layers[shorter])} exists only in {where} "
                f"({len(model.layers)} layers configured, {len(other.layers)} in the init model)")
    return None


def initialize_from(model, init_model, spec):
    """Copy ``init_model``'s weights into ``model`` after checking that the architectures match.

    Args:
        model: the freshly built ``keras.Model``.
        init_model: the loaded ``model.init`` model.
        spec: the ``model.init`` value, for the error message.

    Raises:
        ValueError: the architectures differ, naming the first layer that does.
    """
    mismatch = first_mismatch(model, init_model)
    if mismatch:
        raise ValueError(f"model.init {spec} does not match the configured model: {mismatch}")
    for ours, theirs in zip(model.layers, init_model.layers):
        for variable, value in zip(ours.weights, theirs.weights):
            variable.assign(value.numpy() if hasattr(value, "numpy") else value)


def encoder_layers(model, architecture):
    """The layers ``freeze: encoder`` freezes (by name prefix, see ``ENCODER_PREFIXES``)."""
    prefixes = ENCODER_PREFIXES.get(architecture, DEFAULT_ENCODER_PREFIXES)
    return [layer for layer in model.layers if layer.name.startswith(prefixes)]


def freeze(model, what, architecture):
    """Set ``trainable = False`` on the part ``what`` names (call before compiling).

    Args:
        model: ``keras.Model``; changed in place.
        what: ``"none"`` or ``"encoder"``.
        architecture: ``model.architecture`` of the config.

    Returns:
        int: the number of layers frozen.

    Raises:
        ValueError: unknown ``what``, or no encoder layer found.
    """
    check_choice("model.freeze", what, FREEZE_CHOICES)
    if what == "none":
        return 0
    layers = encoder_layers(model, architecture)
    if not layers:
        raise ValueError(f"model.freeze encoder: the {architecture} model has no encoder "
                         f"layers to freeze")
    for layer in layers:
        layer.trainable = False
    return len(layers)
