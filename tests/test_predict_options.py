"""PredictOptions (one home for the prediction options) and TileGrid (the tile geometry).

The command-line options of ``predict`` / ``predict-volume`` and the napari
widget's parameters are generated from the dataclass: their defaults must be
its defaults. TileGrid is checked against grids computed by hand.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from fusionnet_tf import predict_options
from fusionnet_tf.cli import build_parser, main
from fusionnet_tf.inference import Predictor
from fusionnet_tf.inference.tiling import TileGrid
from fusionnet_tf.predict_options import PredictOptions

# the one default of each option, written out by hand
DEFAULTS = {"tile_shape": 512, "overlap": 64, "tta": 8, "batch_size": None,
            "blending": "gaussian", "align": None, "engine": "auto", "precision": "float32",
            "tile_z": 16, "overlap_z": None, "normalization": "slice"}
FLAGS = {"tile_shape": "--tile-size", "overlap": "--overlap", "tta": "--tta",
         "batch_size": "--batch-size", "blending": "--blending", "align": "--align",
         "engine": "--engine", "precision": "--precision", "tile_z": "--tile-z",
         "overlap_z": "--overlap-z", "normalization": "--normalization"}


def identity(batch):
    return batch


# --------------------------------------------------------------------------- #
# One default, one description per option
# --------------------------------------------------------------------------- #

def test_defaults_and_a_documented_field_each():
    assert PredictOptions().to_dict() == DEFAULTS
    doc = PredictOptions.__doc__
    for field in dataclasses.fields(PredictOptions):
        assert field.metadata["flag"] == FLAGS[field.name]
        line = next(line for line in doc.splitlines()
                    if line.strip().startswith(f"{field.name} ({FLAGS[field.name]}):"))
        assert "(default: " in line, field.name


@pytest.mark.parametrize("command", [["predict", "in.tif", "-o", "out.tif"],
                                     ["predict-volume", "in.zarr", "out.zarr"]])
def test_command_line_defaults_are_the_dataclass_defaults(command):
    args = build_parser().parse_args(command)
    assert predict_options.from_args(args) == PredictOptions()
    assert {name: getattr(args, dest) for name, (dest, _) in predict_options.flags().items()} \
        == DEFAULTS
    parsed = build_parser().parse_args(command + ["--tile-size", "256", "--overlap", "32",
                                                  "--tta", "1", "--engine", "plain"])
    assert predict_options.from_args(parsed) == PredictOptions(tile_shape=256, overlap=32,
                                                               tta=1, engine="plain")
    assert predict_options.three_d_flags(parsed) == []
    parsed = build_parser().parse_args(command + ["--tile-z", "16", "--overlap-z", "2",
                                                  "--normalization", "global"])
    assert predict_options.from_args(parsed) == PredictOptions(tile_z=16, overlap_z=2,
                                                               normalization="global")
    # typed, even at the default value: a 2D model refuses them
    assert predict_options.three_d_flags(parsed) == ["--tile-z", "--overlap-z"]


def test_help_shows_each_fields_text_and_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tta {1,2,4,8,16}" in text
    for field in dataclasses.fields(PredictOptions):
        assert " ".join(predict_options.help_text(field).split()) in text, field.name
    assert "all rotations and flips; for 3D affinity models also 2 = z-flip and 16 = 8 x " \
           "z-flip (their offsets must be known) (default: 8)." in text


NAPARI_DEFAULTS = """
import inspect, json
from fusionnet_tf.napari.predict import OPTIONS, SETTINGS, predict_signature
parameters = predict_signature().parameters
print(json.dumps({"defaults": {name: p.default for name, p in parameters.items()
                               if p.default is not inspect.Parameter.empty
                               and not hasattr(p.default, "parts")},
                  "choices": {name: list(o["choices"]) for name, o in OPTIONS.items()
                              if "choices" in o and name not in ("pretrained",)},
                  "settings": list(SETTINGS)}))
"""


def test_napari_widget_defaults_are_the_dataclass_defaults():
    pytest.importorskip("napari")
    # a process of its own, no display: the signature magicgui builds the widget from
    out = subprocess.run([sys.executable, "-c", NAPARI_DEFAULTS], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["defaults"] == {"pretrained": "isbi2012", "tile_size": 512, "overlap": 64,
                                  "tta": 8, "blending": "gaussian", "engine": "auto",
                                  "precision": "float32", "tile_z": 16,
                                  "normalization": "slice"}
    assert report["choices"]["tta"] == [1, 2, 4, 8, 16]
    assert report["choices"]["engine"] == ["auto", "plain", "frozen", "xla"]
    assert report["choices"]["precision"] == ["float32", "mixed_float16", "mixed_bfloat16",
                                              "auto"]
    assert report["choices"]["normalization"] == ["slice", "global", "dtype"]
    assert report["settings"] == ["pretrained", "model_path", "tile_size", "overlap", "tta",
                                  "blending", "engine", "precision", "tile_z", "normalization"]
    widget_defaults = {k: v for k, v in report["defaults"].items() if k != "pretrained"}
    assert predict_options.from_widget(widget_defaults) == PredictOptions()
    assert predict_options.from_widget({**widget_defaults, "tile_z": 4,
                                        "normalization": "dtype"}) == \
        PredictOptions(tile_z=4, normalization="dtype")


def test_predictor_and_volume_defaults_come_from_the_dataclass():
    import fusionnet_tf

    assert fusionnet_tf.PredictOptions is PredictOptions
    predictor = Predictor(identity)
    assert predictor.options == PredictOptions()
    assert (predictor.tile_shape, predictor.overlap, predictor.tta, predictor.blending) == \
        (512, 64, 8, "gaussian")
    assert Predictor(identity, tta=1).options == PredictOptions(tta=1) == \
        Predictor(identity, PredictOptions(tta=1)).options
    assert Predictor(identity, PredictOptions(tta=1), overlap=8).options == \
        PredictOptions(tta=1, overlap=8)


def test_3d_tiles_and_overlaps_from_ints_and_tuples():
    assert PredictOptions(tile_shape=128).tile(3) == (16, 128, 128)
    assert PredictOptions(tile_shape=128).overlaps(3) == (4, 64, 64)
    assert PredictOptions(tile_shape=128, tile_z=8).tile(3) == (8, 128, 128)
    assert PredictOptions(tile_shape=128, tile_z=8).overlaps(3) == (2, 64, 64)
    assert PredictOptions(tile_shape=128, tile_z=8, overlap_z=3).overlaps(3) == (3, 64, 64)
    assert PredictOptions(tile_shape=128, tile_z=8, overlap_z=3).tile(2) == (128, 128)
    assert PredictOptions(tile_shape=(8, 32, 32), overlap=16).overlaps(3) == (2, 16, 16)
    assert PredictOptions(tile_shape=[8, 32, 32], overlap=[1, 2, 3]).overlaps(3) == (1, 2, 3)
    assert PredictOptions(tile_shape=(32, 32)).tile(2) == (32, 32)
    with pytest.raises(ValueError, match=r"`tile_shape` must be square; received "
                                         r"tile_shape=\(32, 16\)"):
        PredictOptions(tile_shape=(32, 16)).tile(2)
    with pytest.raises(ValueError, match=r"`overlap` must be an int or 2 ints for this 2D"):
        PredictOptions(overlap=(1, 2, 3)).overlaps(2)


def test_to_dict_from_dict_replace_and_hash():
    options = PredictOptions(tile_shape=(8, 32, 32), overlap=(2, 8, 8), tta=16, batch_size=2)
    document = json.loads(json.dumps(options.to_dict()))
    assert PredictOptions.from_dict(document) == options
    assert hash(PredictOptions.from_dict(document)) == hash(options)
    assert options.replace(tta=1).tta == 1 and options.tta == 16
    with pytest.raises(ValueError, match=r"^unknown prediction option\(s\) \['tile'\]; known: "):
        options.replace(tile=3)
    with pytest.raises(ValueError, match=r"^opts.json: unknown prediction option\(s\) \['x'\]"):
        PredictOptions.from_dict({"x": 1}, source="opts.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tta = 1


# --------------------------------------------------------------------------- #
# Invalid values: one line naming the option
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("changes, message", [
    ({"tta": 3}, "`tta` must be one of 1, 2, 4, 8, 16; received tta=3"),
    ({"tile_shape": 0}, "`tile_shape` must be an integer >= 1; received tile_shape=0"),
    ({"tile_shape": (4, 5, 6, 7)}, "`tile_shape` must be an int, (y, x) or (z, y, x)"),
    ({"overlap": -1}, "`overlap` must be an integer >= 0; received overlap=-1"),
    ({"overlap": 512}, "`overlap` must be less than `tile_shape` 512 so that tiles advance; "
                       "received overlap=512"),
    ({"batch_size": 0}, "`batch_size` must be an integer >= 1; received batch_size=0"),
    ({"blending": "linear"}, "`blending` must be one of gaussian, cosine, constant; received "
                             "blending='linear'"),
    ({"align": 0}, "`align` must be an integer >= 1; received align=0"),
    ({"engine": "gpu"}, "`engine` must be one of auto, plain, frozen, xla; received "
                        "engine='gpu'"),
    ({"precision": "float16"}, "`precision` must be one of float32, mixed_float16, "
                               "mixed_bfloat16, auto; received precision='float16'"),
    ({"tile_z": 0}, "`tile_z` must be an integer >= 1; received tile_z=0"),
    ({"overlap_z": -1}, "`overlap_z` must be an integer >= 0; received overlap_z=-1"),
    ({"tile_z": 4, "overlap_z": 4}, "`overlap_z` must be less than `tile_z` 4 so that tiles "
                                    "advance; received overlap_z=4"),
    ({"tile_shape": (8, 32, 32), "overlap_z": 8}, "`overlap_z` must be less than the tile "
                                                  "depth 8 so that tiles advance"),
    ({"normalization": "minmax"}, "`normalization` must be one of slice, global, dtype; "
                                  "received normalization='minmax'"),
])
def test_invalid_options_are_one_line_naming_the_option(changes, message):
    for build in (lambda: PredictOptions(**changes), lambda: PredictOptions().replace(**changes),
                  lambda: Predictor(identity, **changes)):
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_2d_model_refuses_3d_only_tta_and_uneven_overlaps():
    with pytest.raises(ValueError, match=r"^`tta` must be one of 1, 4, 8 for a 2D model; "
                                         r"received tta=16$"):
        Predictor(identity, tta=16)
    with pytest.raises(ValueError, match=r"^`overlap` must be one int for a 2D model"):
        Predictor(identity, overlap=(8, 16))
    assert Predictor(identity, tile_shape=(32, 32), overlap=(8, 8)).tile_origins(32, 40) == \
        [(0, 0), (0, 8)]


@pytest.mark.parametrize("command", [["predict", "missing.tif", "-o", "out.tif"],
                                     ["predict-volume", "missing.zarr", "out.zarr"]])
@pytest.mark.parametrize("option, message", [
    (["--overlap", "512"], "--overlap must be less than --tile-size 512 so that tiles advance; "
                           "received --overlap 512"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1; received --batch-size 0"),
    (["--align", "0"], "--align must be an integer >= 1; received --align 0"),
    (["--tile-z", "0"], "--tile-z must be an integer >= 1; received --tile-z 0"),
    (["--overlap-z", "-1"], "--overlap-z must be an integer >= 0; received --overlap-z -1"),
    (["--tile-z", "4", "--overlap-z", "4"], "--overlap-z must be less than --tile-z 4 so that "
                                            "tiles advance; received --overlap-z 4"),
])
def test_command_line_errors_name_the_flag_before_reading_input(command, option, message,
                                                                capsys):
    assert main(command + option) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["predict", "missing.tif", "-o", "out.tif"],
                                     ["predict-volume", "missing.zarr", "out.zarr"]])
@pytest.mark.parametrize("option, message", [
    (["--normalization", "minmax"], "argument --normalization: invalid choice: 'minmax'"),
    (["--tile-z", "x"], "argument --tile-z: invalid int value: 'x'"),
])
def test_command_line_refuses_bad_choices_with_exit_2(command, option, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + option)
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors


def test_library_messages_name_every_option_by_its_flag():
    from fusionnet_tf.cli import error_message

    args = build_parser().parse_args(["predict", "in.tif", "-o", "out.tif"])
    for name, flag in FLAGS.items():
        text = error_message(ValueError(f"`{name}` is bad; received {name}=3"), args)
        assert text == f"{flag} is bad; received {flag} 3"


# --------------------------------------------------------------------------- #
# TileGrid against hand-computed grids
# --------------------------------------------------------------------------- #

def test_grid_of_a_512_image_with_256_tiles_and_32_overlap():
    # 512 - 256 = 256 to cover in steps of at most 256 - 32 = 224: 3 tiles per axis, spaced
    # evenly at 0, 128, 256 (multiples of 16; the last ends at the border)
    grid = TileGrid.of((512, 512), 256, 32, align=16)
    assert grid.steps == ((0, 128, 256), (0, 128, 256))
    assert grid.strides == ((128, 128), (128, 128))
    assert grid.counts == (3, 3) and len(grid) == 9
    assert grid.padded_shape == (512, 512) and grid.padding == ((0, 0), (0, 0))
    assert grid.origins[:4] == [(0, 0), (0, 128), (0, 256), (128, 0)]
    assert grid.window((128, 256)) == (slice(128, 384), slice(256, 512))


def test_grid_uneven_sizes_alignment_and_padding():
    # 100 - 32 = 68 in steps <= 24: 4 tiles at 0, 22.67, 45.33, 68 -> 0, 22, 45, 68;
    # 90 - 32 = 58: 4 tiles at 0, 19.33, 38.67, 58 -> 0, 19, 38, 58
    grid = TileGrid.of((100, 90), 32, 8)
    assert grid.steps == ((0, 22, 45, 68), (0, 19, 38, 58)) and len(grid) == 16
    assert grid.strides == ((22, 23, 23), (19, 19, 20))
    # align 16 on 70 px: 0, 19 -> 16, then the last at 38 (steps 16, 22 <= 24)
    assert TileGrid.of((32, 70), 32, 8, align=16).steps == ((0,), (0, 16, 38))
    # a 20 px axis shorter than the tile is padded at its end to 32
    small = TileGrid.of((20, 40), 32, 8)
    assert small.padded_shape == (32, 40) and small.padding == ((0, 12), (0, 0))
    assert small.steps == ((0,), (0, 8))
    volume = TileGrid.of((8, 64, 96), (8, 64, 64), (0, 16, 16))
    assert volume.origins == [(0, 0, 0), (0, 0, 32)]
    with pytest.raises(ValueError, match=r"^`overlap` must be at most tile - 16 = 16 so that "
                                         r"tiles advance; received overlap=20 with tile=32$"):
        TileGrid.of((64, 64), 32, 20, align=16)


def test_the_predictor_tiles_and_weights_along_its_grid():
    predictor = Predictor(identity, tile_shape=256, overlap=32, align=16, tta=1,
                          blending="constant")
    assert predictor.grid_for(512, 512) == TileGrid.of((512, 512), 256, 32, 16)
    assert predictor.tile_origins(512, 512) == [(y, x) for y in (0, 128, 256)
                                                for x in (0, 128, 256)]
    # constant weights sum to the number of tiles covering a pixel: 1, 2, 2, 1 per 128 rows
    cover = np.repeat([1, 2, 2, 1], 128).astype(np.float32)
    np.testing.assert_array_equal(predictor.weight_sum(512, 512), np.outer(cover, cover))
    # a 3D callable: an int tile T is (16, T, T), an int overlap O is (16 // 4, O, O)
    identity.spatial_dims = 3
    try:
        volume = Predictor(identity, tile_shape=32, overlap=8, tta=1, blending="constant")
        assert volume.tile_shape == (16, 32, 32) and volume.overlap == (4, 8, 8)
        assert volume.grid_for(40, 32, 56).steps == ((0, 12, 24), (0,), (0, 24))
    finally:
        del identity.spatial_dims


def test_tile_z_and_overlap_z_reach_the_3d_grid():
    identity.spatial_dims = 3
    try:
        volume = Predictor(identity, tile_shape=32, overlap=8, tile_z=8, overlap_z=2, tta=1)
        assert volume.tile_shape == (8, 32, 32) and volume.overlap == (2, 8, 8)
        # z: 20 - 8 = 12 in steps of at most 8 - 2 = 6: origins 0, 6, 12
        assert volume.grid_for(20, 32, 56) == TileGrid.of((20, 32, 56), (8, 32, 32), (2, 8, 8))
        assert volume.grid_for(20, 32, 56).steps == ((0, 6, 12), (0,), (0, 24))
        # without overlap_z the z overlap is a quarter of tile_z: 4 - 1 = 3 per step
        assert Predictor(identity, tile_shape=32, overlap=8, tile_z=4, tta=1).grid_for(
            10, 32, 32).steps == ((0, 3, 6),) + ((0,),) * 2
    finally:
        del identity.spatial_dims
    # a 2D model ignores them (square (T, T) tiles)
    assert Predictor(identity, tile_shape=32, overlap=8, tile_z=4, overlap_z=1,
                     tta=1).grid_for(32, 40) == TileGrid.of((32, 40), 32, 8)


# --------------------------------------------------------------------------- #
# normalization: one option, applied by every entry point that reads raw data
# --------------------------------------------------------------------------- #

def uneven_slices():
    """(2, 40, 40) uint8 whose slices span different ranges: each mode normalizes differently."""
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(10, 60, (40, 40)), rng.integers(60, 200, (40, 40))]
                    ).astype(np.uint8)


def normalized(raw, mode):
    from fusionnet_tf.data import normalize

    return normalize(raw, mode=mode)


def test_the_modes_differ_on_the_test_stack():
    raw = uneven_slices()
    for first, second in (("slice", "global"), ("slice", "dtype"), ("global", "dtype")):
        assert np.abs(normalized(raw, first) - normalized(raw, second)).max() > 0.05


TILING = ["--tile-size", "32", "--overlap", "8", "--tta", "1", "--quiet"]


@pytest.mark.parametrize("mode", [None, "global", "dtype"])
def test_predict_normalizes_as_the_option_says(tmp_path, monkeypatch, mode):
    # an identity "model" writes its input: the output is the normalized image
    import tifffile

    monkeypatch.setattr("fusionnet_tf.cli.predict.resolve_model", lambda args: identity)
    raw = uneven_slices()
    tifffile.imwrite(tmp_path / "in.tif", raw)
    extra = [] if mode is None else ["--normalization", mode]
    assert main(["predict", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif")]
                + TILING + extra) == 0
    np.testing.assert_allclose(tifffile.imread(tmp_path / "out.tif"),
                               normalized(raw, mode or "slice"), atol=1e-5)


def write_volume(path, raw):
    import zarr

    array = zarr.open_array(str(path), mode="w", shape=raw.shape, dtype=raw.dtype,
                            chunks=raw.shape)
    array[...] = raw
    return str(path)


def read_volume(path):
    import zarr

    return zarr.open_array(str(path), mode="r")[...]


@pytest.mark.parametrize("mode", [None, "global", "dtype"])
def test_predict_volume_normalizes_as_the_option_says(tmp_path, mode):
    from fusionnet_tf.volumes import predict_volume

    raw = uneven_slices()
    spec = write_volume(tmp_path / "in.zarr", raw)
    changes = {} if mode is None else {"normalization": mode}
    predict_volume(spec, tmp_path / "kw.zarr", identity, tile_shape=32, overlap=8, tta=1,
                   block_shape=(1, 40, 24), **changes)
    np.testing.assert_allclose(read_volume(tmp_path / "kw.zarr"),
                               normalized(raw, mode or "slice"), atol=1e-5)
    if mode is not None:  # the same through PredictOptions
        predict_volume(spec, tmp_path / "opts.zarr", identity,
                       PredictOptions(tile_shape=32, overlap=8, tta=1, normalization=mode),
                       block_shape=(1, 40, 24))
        np.testing.assert_array_equal(read_volume(tmp_path / "opts.zarr"),
                                      read_volume(tmp_path / "kw.zarr"))


def test_predict_volume_command_normalizes_as_the_option_says(tmp_path, monkeypatch):
    # the command's options reach predict_volume, run here with an identity "model"
    from fusionnet_tf import volumes

    real = volumes.predict_volume
    seen = []

    def with_identity(input_spec, output, model, options, **kwargs):
        seen.append(options)
        kwargs.update(workers=0, scheduler=None, tf_threads=None)
        return real(input_spec, output, identity, options, **kwargs)

    monkeypatch.setattr(volumes, "predict_volume", with_identity)
    raw = uneven_slices()
    spec = write_volume(tmp_path / "in.zarr", raw)
    assert main(["predict-volume", spec, str(tmp_path / "out.zarr"), "--workers", "0",
                 "--normalization", "global"] + TILING) == 0
    assert seen == [PredictOptions(tile_shape=32, overlap=8, tta=1, normalization="global")]
    np.testing.assert_allclose(read_volume(tmp_path / "out.zarr"), normalized(raw, "global"),
                               atol=1e-5)


def test_volume_call_plan_comes_from_the_grid_without_a_predictor(monkeypatch):
    from fusionnet_tf.inference import predictor as predictor_module
    from fusionnet_tf.volumes import runner

    def refuse(*_, **__):
        raise AssertionError("the plan must not build a Predictor")

    monkeypatch.setattr(predictor_module.Predictor, "__init__", refuse)
    # 9 tiles per 512 slice; 8 TTA variants of one 256 px tile fill a call: 3 * 9 calls of 8
    assert runner._call_plan(PredictOptions(tile_shape=256, overlap=32), (3, 512, 512)) == \
        (27, 8)
    # 64 px tiles, no TTA: 16 would make 256 x 256 px but a slice has 4 (0, 36) x (0, 26)
    assert runner._call_plan(PredictOptions(tile_shape=64, overlap=16, tta=1), (2, 100, 90)) \
        == (2, 4)
    assert runner._call_plan(PredictOptions(tile_shape=64, overlap=16, tta=1, batch_size=3),
                             (2, 100, 90)) == (3, 3)
    with pytest.raises(ValueError, match=r"`tta` must be one of 1, 4, 8 for a 2D model"):
        runner._call_plan(PredictOptions(tta=16), (1, 64, 64))
