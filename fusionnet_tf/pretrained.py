"""The pretrained models shipped inside the package, by name.

``REGISTRY`` maps a name (``--model NAME`` in ``predict``, ``predict-volume``
and ``segment --params NAME``) to its weights file, its offsets sidecar (3D
affinity models), its tuned segmentation parameters and its model card
section (MODEL_CARD.md: data, split, training time and scores).

- ``isbi2012``: the 2D FusionNet trained on ISBI 2012 (membrane maps), the
  default model.
- ``snemi3d``: the anisotropic 3D FusionNet trained on SNEMI3D sections 0-59
  (affinities for ``DEFAULT_OFFSETS_3D``), with agglomeration parameters.
"""

import dataclasses
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
    """One shipped model.

    Attributes:
        name: the registry name.
        weights: ``.keras`` file name inside ``WEIGHTS_DIR``.
        params: file name (in ``WEIGHTS_DIR``) of its tuned segmentation
            parameters (``SegmentParams`` for membrane models,
            ``AffinityParams`` for affinity models), or None.
        card: the MODEL_CARD.md section describing it.
        kind: ``"membrane"`` (2D, (B, H, W, 1) -> membrane probability) or
            ``"affinities"`` (3D, (B, Z, Y, X, 1) -> (B, Z, Y, X, C) affinities;
            offsets in ``MODEL.offsets.json`` beside the weights).
        directory: folder of the files (``WEIGHTS_DIR``; tests point it elsewhere).
    """

    name: str
    weights: str
    params: str
    card: str
    kind: str = "membrane"
    directory: Path = WEIGHTS_DIR

    @property
    def weights_path(self):
        return Path(self.directory) / self.weights

    @property
    def offsets_path(self):
        """The offsets sidecar (``MODEL.offsets.json``), or None for a membrane model."""
        if self.kind != "affinities":
            return None
        return self.weights_path.with_name(self.weights_path.stem + ".offsets.json")

    @property
    def params_path(self):
        return None if self.params is None else Path(self.directory) / self.params


DEFAULT_MODEL = "isbi2012"

REGISTRY = {
    "isbi2012": PretrainedModel(
        "isbi2012", "fusionnet_isbi2012.keras", "fusionnet_isbi2012.segment.json",
        "MODEL_CARD.md, 'Model card: FusionNet base 16, ISBI 2012'"),
    "snemi3d": PretrainedModel(
        "snemi3d", "fusionnet3d_snemi3d.keras", "fusionnet3d_snemi3d.segment.json",
        "MODEL_CARD.md, 'Model card: 3D FusionNet, SNEMI3D affinities'", kind="affinities"),
}

# kept for callers of the single-model API
PRETRAINED_FILE = REGISTRY[DEFAULT_MODEL].weights_path


def pretrained_model(name):
    """The ``PretrainedModel`` called ``name``.

    Raises:
        ValueError: an unknown name, listing the known ones (one line).
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r} (and no file of that name); "
                         f"known names: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def is_model_name(spec):
    """True if ``spec`` is meant as a registry name rather than a path.

    A registered name always is; so is any word with no folder separator and
    no file suffix that names nothing on disk (an unknown name, refused by
    ``resolve_model_spec``). Anything else is a path.
    """
    text = str(spec)
    if text in REGISTRY:
        return True
    return ("/" not in text and "\\" not in text and not Path(text).suffix
            and not Path(text).exists())


def pretrained_path(name=DEFAULT_MODEL):
    """Path of a shipped ``.keras`` file.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weights are not shipped (yet) in this package.
    """
    entry = pretrained_model(name)
    path = entry.weights_path
    if not path.is_file():
        raise FileNotFoundError(f"the pretrained model {name!r} is not shipped in this package "
                                f"yet ({path} is missing); pass --model PATH to a .keras file")
    return path


def resolve_model_spec(spec):
    """``--model`` value -> ``(path or None, name or None)``.

    None stays None (the caller's default, the shipped ``isbi2012``); a
    registry name gives its weights path; anything else is a path.

    Raises:
        ValueError / FileNotFoundError: as ``pretrained_model`` / ``pretrained_path``.
    """
    if spec is None:
        return None, None
    if is_model_name(spec):
        return str(pretrained_path(str(spec))), str(spec)
    return str(spec), None


def pretrained_name_of(model_path):
    """The registry name whose weights are ``model_path``, or None."""
    if not model_path:
        return None
    try:
        resolved = Path(model_path).resolve()
    except (OSError, RuntimeError):
        return None
    for name, entry in REGISTRY.items():
        if entry.weights_path.resolve() == resolved:
            return name
    return None


def pretrained_params_path(name):
    """The tuned segmentation parameters file of model ``name``.

    Raises:
        ValueError: unknown name, or a model that ships no parameters.
        FileNotFoundError: the parameters are not shipped (yet).
    """
    entry = pretrained_model(name)
    path = entry.params_path
    if path is None:
        raise ValueError(f"the pretrained model {name!r} ships no segmentation parameters")
    if not path.is_file():
        raise FileNotFoundError(f"the segmentation parameters of the pretrained model {name!r} "
                                f"are not shipped in this package yet ({path} is missing)")
    return path


def load_pretrained(name=DEFAULT_MODEL):
    """Load a shipped model as a float32 ``keras.Model``.

    Returns:
        ``keras.Model``. ``isbi2012`` maps (batch, H, W, 1) float32 images in
        [0, 1] (per-slice min-max normalized) to (batch, H, W, 1) float32
        membrane probabilities; H and W must be multiples of 16. ``snemi3d``
        maps (batch, Z, Y, X, 1) to (batch, Z, Y, X, C) float32 affinities.

    Example:
    >>> model = fusionnet_tf.load_pretrained()
    """
    import keras

    return keras.saving.load_model(pretrained_path(name), compile=False)


EXAMPLE_FILE = Path(__file__).resolve().parent / "examples" / "isbi2012_test_slices_0-2.tif"


def example_path():
    """Path of the shipped example stack: 3 x 512 x 512 uint8 ISBI 2012 test slices."""
    return EXAMPLE_FILE
