"""BioImage Model Zoo packages of 3D affinity models (bioimage.io model format 0.5).

``export_bioimageio_3d`` packages a Keras 3D affinity model (input (B, Z, Y,
X, 1) float32, output (B, Z, Y, X, C) sigmoid affinities, channel c along
``offsets[c]`` = (dz, dy, dx)) the way ``bioimageio.export_bioimageio``
packages a 2D membrane model, with what differs:

- input ``raw``: axes (batch, z, y, x, channel), one channel ``em``; z, y
  and x of size ``min + n * step`` with ``step`` the model's input multiple
  along that axis; preprocessing ``scale_range`` 0-100 percentiles over (y,
  x), i.e. per-section min-max, as ``fusionnet predict`` normalizes
  (``normalize(mode="slice")``);
- output ``affinities``: axes (batch, z, y, x, channel), one channel per
  offset, named ``dz{dz}_dy{dy}_dx{dx}`` (``m`` for a minus sign), float32 in
  [0, 1], with a per-axis ``halo`` measured by ``measure_halo_3d``;
- the offsets are recorded in ``config.fusionnet_tf.offsets``, in the
  documentation, in an attached ``offsets.json`` (the sidecar format
  ``Predictor`` reads) and beside the package as ``NAME.offsets.json`` (so
  ``fusionnet predict --model NAME.zip`` finds them);
- test tensors from a (Z, Y, X) crop of the example volume (by default the
  three shipped ISBI 2012 test slices, reflected in z to the test depth),
  the cover is its middle section and ``1 - mean`` nearest-neighbour
  affinity (the boundary map agglomeration uses) in red.

Weights, validation (``bioimageio.spec``) and testing (``bioimageio.core``,
in a child process, before the package is moved into place) are shared with
the 2D exporter.
"""

import tempfile
from pathlib import Path

import numpy as np

from fusionnet_tf.export import bioimageio as bio
from fusionnet_tf.io.outputs import atomic_path

INPUT_ID = bio.INPUT_ID
OUTPUT_ID = "affinities"
# Measurement tiles (z, yx) tried in turn (rounded up to twice the input multiples); z
# grows with yx because (3, 3, 3) levels give 3D FusionNets a deep receptive field in z.
HALO_TILES_3D = ((16, 64), (32, 128), (64, 256))
# (z, yx) of the test tensor (rounded up to a size the package accepts).
TEST_SHAPE_3D = (8, 128)
BASE_TAGS_3D = ("electron-microscopy", "affinities", "instance-segmentation", "connectomics",
                "3d", "keras", "tensorflow")
OFFSETS_NAME = "offsets.json"


def check_model_3d(model):
    """ValueError unless ``model`` maps one (B, Z, Y, X, 1) volume to one (B, Z, Y, X, C) map."""
    bio.check_single_io_model(model)
    if len(model.input_shape) != 5 or model.input_shape[-1] != 1 or len(model.output_shape) != 5:
        raise ValueError(f"a 3D bioimage.io package needs (batch, z, y, x, 1) -> (batch, z, y, "
                         f"x, C); {model.name!r} has input shape {tuple(model.input_shape)} and "
                         f"output shape {tuple(model.output_shape)}")
    if tuple(model.input_shape[1:4]) != (None, None, None):
        raise ValueError(f"a bioimage.io package declares parameterized z/y/x sizes, so the "
                         f"model must accept any Z, Y and X; {model.name!r} has input shape "
                         f"{tuple(model.input_shape)}")
    return model


def channel_name(offset):
    """Output channel name of an offset: (-1, 0, 0) -> ``dzm1_dy0_dx0``."""
    return "_".join(f"d{axis}{'m' if value < 0 else ''}{abs(int(value))}"
                    for axis, value in zip("zyx", offset))


# === Halo ===

def _predict_volume(model, volume):
    """(Z, Y, X) float32 -> (Z, Y, X, C) float32 with the Keras model (no tiling)."""
    return np.asarray(model(volume[None, ..., None], training=False), np.float32)[0]


def _fit(array, shape):
    """Centre crop of ``array`` to ``shape``, reflect-padded (repeatedly) where it is smaller."""
    pad = [max(side - length, 0) for side, length in zip(shape, array.shape)]
    array = np.pad(array, [(p // 2, p - p // 2) for p in pad], mode="reflect" if min(
        array.shape) > 1 else "edge")
    start = [(length - side) // 2 for side, length in zip(shape, array.shape)]
    return array[tuple(slice(s, s + side) for s, side in zip(start, shape))]


def border_difference(model, volume, tile):
    """Largest |tile alone - tile inside a twice as large volume| over channels, per voxel.

    Args:
        model: ``keras.Model`` (B, Z, Y, X, 1) -> (B, Z, Y, X, C).
        volume: (Z, Y, X) float32 in [0, 1], a normalized EM volume.
        tile: (tz, ty, tx), each a multiple of twice the input multiple.

    Returns:
        (tz, ty, tx) float32.
    """
    canvas = _fit(np.asarray(volume, np.float32), tuple(2 * t for t in tile))
    centre = tuple(slice(t // 2, t // 2 + t) for t in tile)
    whole = _predict_volume(model, canvas)[centre]
    alone = _predict_volume(model, canvas[centre])
    return np.abs(alone - whole).max(axis=-1)


def choose_halo(difference, tolerance, multiples):
    """The (hz, hyx) border that hides every voxel above ``tolerance`` and wastes least.

    A voxel at z-distance ``dz`` and in-plane distance ``dyx`` from the tile
    border lies inside the halo if ``dz < hz`` or ``dyx < hyx``. For each
    ``hz`` the smallest such ``hyx`` is taken; of the pairs that leave at
    least one input multiple in the centre, the one keeping the largest
    central volume wins. None if none fits.
    """
    tz, ty, tx = difference.shape
    zz, yy, xx = np.meshgrid(np.arange(tz), np.arange(ty), np.arange(tx), indexing="ij")
    dz = np.minimum(zz, tz - 1 - zz)
    dyx = np.minimum(np.minimum(yy, ty - 1 - yy), np.minimum(xx, tx - 1 - xx))
    bad = difference > tolerance
    best = None
    for hz in range(tz // 2 + 1):
        left = bad & (dz >= hz)
        hyx = int(dyx[left].max()) + 1 if left.any() else 0
        if hz > tz // 2 - multiples[0] or hyx > min(ty, tx) // 2 - multiples[1]:
            continue
        kept = (tz - 2 * hz) * (ty - 2 * hyx) * (tx - 2 * hyx)
        if best is None or kept > best[0]:
            best = (kept, hz, hyx)
    return None if best is None else (best[1], best[2])


def measure_halo_3d(model, volume, tolerance=bio.HALO_TOLERANCE, tiles=HALO_TILES_3D):
    """Per-axis border (voxels) in which a tile's affinities differ from the whole volume's.

    Args:
        model: ``keras.Model`` (B, Z, Y, X, 1) -> (B, Z, Y, X, C).
        volume: (Z, Y, X) float32 normalized EM volume.
        tolerance: float. Largest tolerated absolute affinity difference.
        tiles: (z, yx) measurement tiles tried in turn.

    Returns:
        dict with ``halo`` ([hz, hy, hx]), ``tile`` ([tz, ty, tx]) and ``tolerance``.

    Raises:
        ValueError: if the border effect fills even the largest tile.
    """
    from fusionnet_tf.export.model_card import input_multiples_3d

    mz, my, mx = input_multiples_3d(model)
    tile = None
    for tz, tyx in tiles:
        tile = (-(-tz // (2 * mz)) * 2 * mz, -(-tyx // (2 * my)) * 2 * my,
                -(-tyx // (2 * mx)) * 2 * mx)
        halo = choose_halo(border_difference(model, volume, tile), tolerance, (mz, my))
        if halo is not None:
            hz, hyx = halo
            return {"halo": [hz, hyx, hyx], "tile": list(tile), "tolerance": tolerance}
    raise ValueError(f"the border effect of {model.name!r} exceeds the largest measurement tile "
                     f"{list(tile)} (tolerance {tolerance}); cannot declare a halo")


# === Package files ===

def example_volume(example):
    """(Z, Y, X) raw example volume: ``example`` or the shipped ISBI 2012 test slices."""
    from fusionnet_tf.data import read_stack
    from fusionnet_tf.pretrained import example_path

    raw = np.asarray(read_stack(example_path()) if example is None else example)
    if raw.ndim != 3 or 0 in raw.shape:
        raise ValueError(f"`example` must be a (Z, Y, X) raw EM volume; received shape "
                         f"{raw.shape}")
    return raw


def test_shape(halo, multiples):
    """(Z, Y, X) of the test tensor: ``TEST_SHAPE_3D`` rounded up to sizes the package accepts."""
    sizes = [bio.input_size(h, m) for h, m in zip(halo["halo"], multiples)]
    wanted = (TEST_SHAPE_3D[0], TEST_SHAPE_3D[1], TEST_SHAPE_3D[1])
    return tuple(max(minimum, -(-want // step) * step)
                 for (minimum, step), want in zip(sizes, wanted))


def boundary_map(affinities, offsets):
    """(Z, Y, X) 1 - mean of the nearest-neighbour affinities (the offsets with |d| = 1)."""
    nearest = [c for c, o in enumerate(offsets) if sum(abs(v) for v in o) == 1]
    channels = nearest or list(range(len(offsets)))
    return 1.0 - affinities[..., channels].mean(axis=-1)


def write_package_files_3d(model, folder, formats, raw, halo, offsets):
    """Weights, test/sample tensors, cover and ``offsets.json`` in ``folder``; dict of paths."""
    import imageio.v3 as iio
    import tifffile

    from fusionnet_tf.data import normalize
    from fusionnet_tf.export.model_card import input_multiples_3d
    from fusionnet_tf.export.saved_model import write_offsets_sidecar

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"keras_v3": folder / "weights.keras"}
    model.save(files["keras_v3"])
    if "tensorflow_saved_model_bundle" in formats:
        files["tensorflow_saved_model_bundle"] = bio._saved_model_bundle(model, folder)
    if "onnx" in formats:
        from fusionnet_tf.export.onnx import export_onnx

        files["onnx"] = export_onnx(model, folder / "onnx", name="weights")
        files["opset"] = bio.onnx_opset(files["onnx"])
    shape = test_shape(halo, input_multiples_3d(model))
    raw_tile = _fit(raw, shape)
    output = _predict_volume(model, normalize(raw_tile.astype(np.float32), mode="slice"))
    test_input = raw_tile.astype(np.float32)[None, ..., None]
    for key, array in (("test_input", test_input), ("test_output", output[None])):
        files[key] = folder / f"{key}.npy"
        np.save(files[key], array)
    files["sample_input"] = folder / "sample_input.tif"
    tifffile.imwrite(files["sample_input"], raw_tile)
    files["sample_output"] = folder / "sample_output.tif"  # (Z, C, Y, X): ImageJ's ZCYX order
    tifffile.imwrite(files["sample_output"], np.ascontiguousarray(np.moveaxis(output, -1, 1)))
    middle = shape[0] // 2
    files["cover"] = folder / "cover.png"
    iio.imwrite(files["cover"], bio.cover_image(raw_tile[middle],
                                                boundary_map(output, offsets)[middle]))
    files["offsets"] = write_offsets_sidecar(folder / OFFSETS_NAME, offsets)
    files["test_shape"] = list(shape)
    return files


def documentation_3d(knobs, halo, sizes, formats, offsets, meta, model_card=None):
    """The package's README.md for a 3D affinity model (markdown str)."""
    tolerance = bio.REPRODUCIBILITY
    table = [f"| {c} | `{channel_name(o)}` | {tuple(o)} |" for c, o in enumerate(offsets)]
    size_text = ", ".join(f"{axis}: {minimum} + n x {step}"
                          for axis, (minimum, step) in zip("zyx", sizes))
    lines = bio.readme_header(meta, knobs, "3D affinities") + [
        f"- Input `{INPUT_ID}`: axes (batch, z, y, x, channel), one channel, raw EM "
        f"intensities as float32. Sizes: {size_text}.",
        "- Preprocessing: `scale_range` with percentiles 0 and 100 over (y, x): per-section "
        "min-max to [0, 1] (`fusionnet_tf.data.normalize(mode='slice')`).",
        f"- Output `{OUTPUT_ID}`: axes (batch, z, y, x, channel), float32 in [0, 1], one "
        "channel per offset (dz, dy, dx): the probability that voxel p and p + offset belong "
        "to the same object. 1 - the mean of the nearest-neighbour channels is the boundary "
        "map agglomeration starts from.",
        f"- Halo (z, y, x): {halo['halo']} voxels, measured on a {halo['tile']} tile "
        f"(tolerance {halo['tolerance']:g}); tile with at least this overlap.",
        "",
        "| channel | name | offset (dz, dy, dx) |",
        "| --- | --- | --- |",
        *table,
        "",
        f"The offsets are also in `{OFFSETS_NAME}` (attached) and `config.fusionnet_tf.offsets`.",
        "",
        "## Weights",
        "",
        f"Formats: {', '.join(formats)}. `keras_v3` is the original; the others convert it.",
        "",
        "## Validation",
        "",
        "The test input is a crop of real EM sections (raw intensities); the test output is "
        "the Keras model's prediction on it. Tolerance: absolute "
        f"{tolerance['absolute_tolerance']:g} + relative {tolerance['relative_tolerance']:g}. "
        "Re-run with `bioimageio test PACKAGE.zip`.",
        "",
        "## Training data",
        "",
        bio._training_data_text(meta["training_data"]),
        "",
        "## Citations",
        "",
    ]
    lines += [f"- {text}. doi:{doi}" for text, doi in meta["cite"]] or ["- none stated"]
    if model_card:
        lines += ["", "---", "", bio._markdown_for_package(model_card)]
    return "\n".join(lines) + "\n"


def _axes_3d(spec, sizes=None, halo=None, channels=("em",)):
    """(batch, z, y, x, channel) axes of the input (``sizes``: (min, step) per axis) or output."""
    space = []
    for axis, index in zip("zyx", range(3)):
        if halo is None:
            minimum, step = sizes[index]
            space.append(spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(
                min=minimum, step=step)))
            continue
        reference = spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis))
        space.append(spec.SpaceOutputAxisWithHalo(id=spec.AxisId(axis), halo=halo[index],
                                                  size=reference) if halo[index] else
                     spec.SpaceOutputAxis(id=spec.AxisId(axis), size=reference))
    return [spec.BatchAxis(), *space,
            spec.ChannelAxis(channel_names=[spec.Identifier(name) for name in channels])]


def build_description_3d(model, files, formats, halo, docs_path, meta, offsets, license="MIT",
                         extra_config=None):
    """The ``bioimageio.spec`` 0.5 ``ModelDescr`` of a 3D affinity package (validated)."""
    from bioimageio.spec.model import v0_5 as spec

    from fusionnet_tf.export.model_card import architecture_knobs

    knobs = architecture_knobs(model)
    sizes = [bio.input_size(h, m) for h, m in zip(halo["halo"], knobs["input_multiple"])]
    scale_range = spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
        axes=[spec.AxisId("y"), spec.AxisId("x")], min_percentile=0.0, max_percentile=100.0,
        eps=bio.SCALE_RANGE_EPS))
    names = [channel_name(o) for o in offsets]
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID), axes=_axes_3d(spec, sizes),
        description="EM volume, raw intensities (uint8/uint16 cast to float32)",
        data=spec.IntervalOrRatioDataDescr(type="float32"), preprocessing=[scale_range],
        test_tensor=spec.FileDescr(source=files["test_input"]),
        sample_tensor=spec.FileDescr(source=files["sample_input"]))]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID), axes=_axes_3d(spec, halo=halo["halo"], channels=names),
        description="affinities, channel c along offset (dz, dy, dx) = "
                    + ", ".join(f"{n}: {list(o)}" for n, o in zip(names, offsets)),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        test_tensor=spec.FileDescr(source=files["test_output"]),
        sample_tensor=spec.FileDescr(source=files["sample_output"]))]
    config = spec.Config(
        bioimageio=spec.BioimageioConfig(
            reproducibility_tolerance=[spec.ReproducibilityTolerance(**bio.REPRODUCIBILITY)],
            architecture_type=meta["title"][:32],
            architecture_description=meta["architecture_description"],
            modality="electron microscopy", target_structure=["neurons"],
            task="affinity prediction for instance segmentation",
            model_parameter_count=knobs["parameters"]),
        fusionnet_tf=dict(extra_config or {}, halo=halo, architecture=knobs,
                          training_data=meta["training_data"],
                          offsets=[[int(v) for v in o] for o in offsets], channel_names=names))
    return spec.ModelDescr(
        name=meta["name"], description=meta["description"],
        covers=[spec.FileDescr(source=files["cover"])],
        authors=[spec.Author(name=name) for name in meta["authors"]],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in meta["cite"]],
        license=spec.LicenseId(license), tags=meta["tags"],
        documentation=spec.FileDescr(source=docs_path),
        attachments=[spec.FileDescr(source=files["offsets"])],
        inputs=inputs, outputs=outputs,
        weights=bio._weights(spec, files, formats, OUTPUT_ID), config=config)


def export_bioimageio_3d(model, output_dir, name, offsets, example=None,
                         weight_formats=bio.WEIGHT_FORMATS, model_card=None, authors=None,
                         license="MIT", test=True, card_extra=None, shipped=False,
                         description=None, training_data=None, tags=()):
    """Write ``<output_dir>/<name>.zip``, a bioimage.io package of a 3D affinity model.

    Args:
        model: ``keras.Model`` (B, Z, Y, X, 1) float32 in [0, 1] -> (B, Z, Y,
            X, C) float32 affinities.
        output_dir: str or Path (created if missing).
        name: str. File stem.
        offsets: C (dz, dy, dx) int triples, one per output channel (required).
        example: (Z, Y, X) raw EM volume for the halo, test tensors and cover
            (default: the shipped ISBI 2012 test slices).
        weight_formats, model_card, authors, license, test, card_extra,
        shipped, description, training_data, tags: as
            ``bioimageio.export_bioimageio``.

    Returns:
        Path of the ``.zip``; ``<name>.model_card.json`` and
        ``<name>.offsets.json`` are written next to it.

    Raises:
        ValueError: bad name, formats, model or offsets, an invalid
            description or a failing test (nothing is written then).

    Example:
    >>> export_bioimageio_3d(model, "packages", "snemi3d", DEFAULT_OFFSETS_3D)
    PosixPath('packages/snemi3d.zip')
    """
    from bioimageio.spec import save_bioimageio_package
    from pydantic import ValidationError

    from fusionnet_tf.data import normalize
    from fusionnet_tf.export.model_card import (architecture_knobs, build_model_card,
                                                card_path_for, library_versions,
                                                write_model_card)
    from fusionnet_tf.export.saved_model import write_offsets_sidecar
    from fusionnet_tf.inference.affinity_tta import check_offsets
    from fusionnet_tf.inference.predictor import model_offsets_path

    bio.check_name(name)
    formats = bio.check_weight_formats(weight_formats)
    check_model_3d(model)
    if offsets is None:
        raise ValueError("`offsets` are required for a 3D affinity package: one (dz, dy, dx) "
                         "per output channel")
    offsets = check_offsets(offsets, model.output_shape[-1])
    knobs = dict(architecture_knobs(model), keras=bio._version("keras"))
    derived = (f"Affinities for 3D electron-microscopy volumes, {len(offsets)} offsets "
               f"({knobs['family'] or model.name}, base {knobs['base_filters']}, depth "
               f"{knobs['depth']}), exported by fusionnet-tf.")
    meta = bio.package_metadata(model, name, shipped, description, training_data, tags, authors,
                                formats, base_tags=BASE_TAGS_3D, derived=derived)
    raw = example_volume(example)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}.zip"
    halo = measure_halo_3d(model, normalize(raw.astype(np.float32), mode="slice"))
    sizes = [bio.input_size(h, m) for h, m in zip(halo["halo"], knobs["input_multiple"])]
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".bioimageio-") as work:
        work = Path(work)
        files = write_package_files_3d(model, work / "files", formats, raw, halo, offsets)
        docs = work / "files" / bio.DOCUMENTATION_NAME
        docs.write_text(documentation_3d(knobs, halo, sizes, formats, offsets, meta, model_card))
        extra = dict(card_extra or {}, versions=library_versions(),
                     test_shape=files["test_shape"])
        try:
            descr = build_description_3d(model, files, formats, halo, docs, meta, offsets,
                                         license, extra)
        except ValidationError as exc:
            raise ValueError(f"the bioimage.io description is invalid: "
                             f"{bio._one_line(exc)}") from None
        with atomic_path(path) as tmp:
            save_bioimageio_package(descr, output_path=tmp)
            if test:
                bio.run_package_tests(tmp, formats, working_dir=work)
            write_offsets_sidecar(model_offsets_path(path), offsets)
    card = build_model_card(model, "bioimageio", path.name, tolerance=str(bio.REPRODUCIBILITY),
                            extra=dict(card_extra or {}, halo=halo, weight_formats=list(formats),
                                       tested_with_bioimageio_core=bool(test), bioimageio=meta,
                                       offsets=[list(o) for o in offsets]))
    write_model_card(card, card_path_for(path))
    return path


def read_package_offsets(path):
    """The offsets in a package's ``config.fusionnet_tf.offsets`` (None if absent)."""
    from fusionnet_tf.inference.affinity_tta import check_offsets
    from fusionnet_tf.inference.backends.bioimageio_zip import read_package_description

    config = (read_package_description(path).get("config") or {}).get("fusionnet_tf") or {}
    offsets = config.get("offsets")
    return None if offsets is None else check_offsets(offsets)


__all__ = ["export_bioimageio_3d", "measure_halo_3d", "choose_halo", "channel_name",
           "read_package_offsets", "check_model_3d"]
