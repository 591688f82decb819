"""bioimage.io runtime: a BioImage Model Zoo package ``.zip`` run through its ``keras_v3`` weights.

Only packages that ``fusionnet predict`` runs exactly are loaded (see
``load_package_model``). Reads the package's ``rdf.yaml`` with PyYAML;
bioimageio.spec and bioimageio.core are not needed. Writing packages is
``fusionnet_tf.export.bioimageio``.
"""

import tempfile
import zipfile
from pathlib import Path


def load(path):
    """The ``keras.Model`` of the package ``path`` (``load_package_model``)."""
    return load_package_model(path)


def read_package_description(path):
    """The parsed ``rdf.yaml`` (or ``bioimageio.yaml``) of a package ``.zip``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not a zip, or no description inside.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bioimage.io package not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"not a bioimage.io package (not a zip file): {path}")
    with zipfile.ZipFile(path) as archive:
        names = [name for name in ("bioimageio.yaml", "rdf.yaml") if name in archive.namelist()]
        if not names:
            raise ValueError(f"not a bioimage.io package (no rdf.yaml or bioimageio.yaml): {path}")
        return yaml.safe_load(archive.read(names[0])) or {}


def load_package_model(path):
    """The ``keras.Model`` of a bioimage.io package's ``keras_v3`` weights.

    Only packages that ``fusionnet predict`` can run exactly are accepted:
    one input and one output with axes (batch, y, x, channel) (or (batch, z,
    y, x, channel): a 3D affinity model, its offsets in ``NAME.offsets.json``
    beside the package), one input channel,
    and either no preprocessing or per-sample min-max (``scale_range`` 0-100
    over y, x), which is ``--normalization slice``. Reads ``rdf.yaml`` with
    PyYAML; bioimageio.spec is not needed.

    Raises:
        FileNotFoundError: missing package.
        ValueError: not a package, no keras_v3 weights, or a layout or
            preprocessing that ``fusionnet predict`` would not reproduce.
    """
    import keras

    description = read_package_description(path)
    weights = description.get("weights") or {}
    if "keras_v3" not in weights:
        raise ValueError(f"bioimage.io package {path} has no keras_v3 weights (it has "
                         f"{', '.join(weights) or 'none'}); fusionnet predict runs keras_v3")
    _check_package_layout(description, path)
    member = str(weights["keras_v3"]["source"])
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
        if member not in archive.namelist():
            raise ValueError(f"bioimage.io package {path} lacks its keras_v3 file {member!r}")
        target = Path(tmp) / "weights.keras"
        target.write_bytes(archive.read(member))
        return keras.saving.load_model(target, compile=False)


def _check_package_layout(description, path):
    inputs, outputs = description.get("inputs") or [], description.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"bioimage.io package {path} has {len(inputs)} inputs and "
                         f"{len(outputs)} outputs; fusionnet predict needs one of each")
    for tensor in (inputs[0], outputs[0]):
        axes = [axis.get("type") for axis in tensor.get("axes") or []]
        ids = [axis.get("id", axis.get("type")) for axis in tensor.get("axes") or []]
        planar = axes == ["batch", "space", "space", "channel"] and ids[1:3] == ["y", "x"]
        volume = (axes == ["batch", "space", "space", "space", "channel"]
                  and ids[1:4] == ["z", "y", "x"])
        if not (planar or volume):
            raise ValueError(f"bioimage.io package {path}: tensor {tensor.get('id')!r} has axes "
                             f"{ids}; fusionnet predict needs (batch, y, x, channel) or (batch, "
                             "z, y, x, channel)")
    for step in inputs[0].get("preprocessing") or []:
        kwargs = step.get("kwargs") or {}
        if step.get("id") == "ensure_dtype":
            continue
        if (step.get("id") == "scale_range" and sorted(kwargs.get("axes") or []) == ["x", "y"]
                and float(kwargs.get("min_percentile", 0)) == 0
                and float(kwargs.get("max_percentile", 100)) == 100):
            continue
        raise ValueError(f"bioimage.io package {path}: preprocessing {step.get('id')!r} "
                         f"{kwargs} is not per-slice min-max; fusionnet predict cannot "
                         "reproduce it")
