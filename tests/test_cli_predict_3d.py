"""``fusionnet predict`` with a 3D affinity model: files with offsets, and bad input."""

import json
import types

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from affinity_models import OFFSETS, affinity_model
from fusionnet_tf import cli
from fusionnet_tf.data import normalize
from fusionnet_tf.inference import Predictor

TILING = ["--tile-size", "16", "--tile-z", "4", "--overlap", "4", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_file):
    """A saved affinity model with its offsets sidecar, one without, the 2D model, volumes."""
    root = tmp_path_factory.mktemp("cli3d")
    model = affinity_model(OFFSETS)
    model.save(root / "aff.keras")
    (root / "aff.offsets.json").write_text(json.dumps({"offsets": OFFSETS}))
    model.save(root / "bare.keras")  # no sidecar
    raw = np.random.default_rng(0).integers(0, 256, (6, 20, 18), dtype=np.uint8)
    tifffile.imwrite(root / "volume.tif", raw)
    tifffile.imwrite(root / "section.tif", raw[:1])
    return types.SimpleNamespace(root=root, raw=raw, model=str(root / "aff.keras"),
                                 bare=str(root / "bare.keras"),
                                 membrane=str(tiny_model_file),
                                 volume=str(root / "volume.tif"),
                                 section=str(root / "section.tif"))


@pytest.fixture(autouse=True)
def _only_predict(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"predict": "fusionnet_tf.cli.predict"})


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def read_affinities(spec):
    """(data (C, Z, Y, X), metadata dict) of a file written by ``write_affinities``."""
    text = str(spec)
    if text.endswith(".zarr"):
        array = zarr.open_array(text, mode="r")
        return array[...], dict(array.attrs)
    if ".h5" in text:
        path, _, key = text.partition(":")
        with h5py.File(path, "r") as handle:
            dataset = handle[key or "affinities"]
            return dataset[...], {"kind": dataset.attrs["kind"],
                                  "offsets": json.loads(dataset.attrs["offsets"])}
    with tifffile.TiffFile(text) as tif:
        metadata = json.loads(tif.pages[0].description)
        return tif.asarray().reshape(metadata["shape"]), metadata


@pytest.mark.parametrize("name", ["aff.tif", "aff.h5", "aff.h5:/pred/affs", "aff.zarr"])
def test_predict_writes_affinities_with_their_offsets(files, tmp_path, capsys, name):
    out = f"{tmp_path}/{name}"
    code, err = run_cli(["predict", files.volume, "-o", out, "--model", files.model, "--tta", "16"]
                        + TILING, capsys)
    assert code == 0, err
    data, metadata = read_affinities(out)
    assert data.dtype == np.float32 and data.shape == (len(OFFSETS),) + files.raw.shape
    assert metadata["kind"] == "affinities"
    assert [tuple(o) for o in metadata["offsets"]] == OFFSETS
    predictor = Predictor(affinity_model(OFFSETS), tile_shape=(4, 16, 16), overlap=(1, 4, 4),
                          tta=16, offsets=OFFSETS, engine="plain")
    expected = predictor.predict(normalize(files.raw, mode="slice"))
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-6)



def test_explicit_offsets_and_a_replaced_zarr_store(files, tmp_path, capsys):
    out = tmp_path / "aff.zarr"
    argv = ["predict", files.volume, "-o", out, "--model", files.bare, "--tta", "1",
            "--offsets", json.dumps(OFFSETS)] + TILING
    assert run_cli(argv, capsys)[0] == 0
    assert run_cli(argv, capsys)[0] == 0  # an earlier store is replaced
    data, metadata = read_affinities(out)
    assert [tuple(o) for o in metadata["offsets"]] == OFFSETS and data.shape[0] == len(OFFSETS)
    assert [p.name for p in tmp_path.iterdir()] == ["aff.zarr"]  # no temporary stores left


@pytest.mark.parametrize("argv, match", [
    (["{section}", "--model", "{model}"], r"INPUT .*section.tif is a single 2D image \(shape "
                                          r"\(20, 18\)\); a 3D model needs a \(Z, Y, X\) volume"),
    (["{volume}", "--model", "{model}", "--offsets", "[[-1,0,0],[0,-1,0],[0,0,-1]]"],
     "3 offsets do not match the model's 6 output channels"),
    (["{volume}", "--model", "{bare}"], r"offsets of the 3D model .*bare.keras are unknown"),
    (["{volume}", "--model", "{model}", "--offsets", "[[1,2]]"], "--offsets"),
    (["{volume}", "--model", "{membrane}", "--offsets", "[[-1,0,0]]"],
     "--offsets applies to 3D affinity models"),
    (["{volume}", "--model", "{membrane}", "--tile-z", "4"],
     "--tile-z applies to 3D affinity models"),
    (["{volume}", "--model", "{model}", "--isbi"], "--isbi applies to membrane maps"),
    (["{volume}", "--model", "{model}", "--tile-size", "16", "--overlap", "16"],
     "--overlap must be less than --tile-size 16 so that tiles advance; received --overlap 16"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, argv, match):
    import re

    out = tmp_path / "out.zarr"
    argv = [a.format(**vars(files)) for a in argv]
    code, err = run_cli(["predict", argv[0], "-o", out] + argv[1:] + ["--quiet"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("fusionnet predict: error: ")
    assert re.search(match, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_affinities_need_a_volume_output_format(files, tmp_path, capsys):
    code, err = run_cli(["predict", files.volume, "-o", tmp_path / "pngs", "--model",
                         files.model, "--tta", "1"] + TILING, capsys)
    assert code == 2 and "affinities are written to a .tif/.tiff, .h5[:/key] or .zarr" in err
    assert list(tmp_path.iterdir()) == []
