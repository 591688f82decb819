"""Pretrained models by name: ``--model NAME`` and ``--params NAME`` (issue 22, item 7).

A tiny 3D FusionNet is registered under a temporary name (the real SNEMI3D
weights are not needed): ``predict --model NAME --segment`` must predict and
segment with the parameters shipped with NAME in one command.
"""

import dataclasses
import json

import numpy as np
import pytest
import tifffile
import zarr

from fusionnet_tf import cli, pretrained
from fusionnet_tf.data.affinities import DEFAULT_OFFSETS_3D
from fusionnet_tf.models.fusionnet3d import build_fusionnet3d
from fusionnet_tf.segmentation.affinity_params import AffinityParams

TILING = ["--tile-size", "16", "--tile-z", "4", "--overlap", "4", "--tta", "1", "--quiet"]
# shipped parameters that differ from AffinityParams() in what they do
SHIPPED = {"method": "agglomeration", "merge_threshold": 1.0, "min_size": 0,
           "seed_threshold": 0.9, "seed_distance": 1.0}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A weights folder holding a tiny fusionnet3d, its offsets and its tuned parameters."""
    root = tmp_path_factory.mktemp("weights")
    offsets = [list(o) for o in DEFAULT_OFFSETS_3D]
    model = build_fusionnet3d(out_channels=len(offsets), base_filters=2, depth=1,
                              residual_convs=1, anisotropic_levels=1)
    model.save(root / "tiny3d.keras")
    (root / "tiny3d.offsets.json").write_text(json.dumps({"offsets": offsets}))
    (root / "tiny3d.segment.json").write_text(json.dumps({"params": SHIPPED}))
    raw = np.random.default_rng(0).integers(0, 256, (6, 24, 20), dtype=np.uint8)
    tifffile.imwrite(root / "volume.tif", raw)
    return root, raw


@pytest.fixture
def registry(shipped, monkeypatch):
    """REGISTRY with ``tiny3d`` (shipped) and ``later3d`` (weights not shipped yet)."""
    root, _ = shipped
    entries = dict(pretrained.REGISTRY)
    entries["tiny3d"] = pretrained.PretrainedModel(
        "tiny3d", "tiny3d.keras", "tiny3d.segment.json", "test", kind="affinities",
        directory=root)
    entries["later3d"] = dataclasses.replace(entries["tiny3d"], name="later3d",
                                             weights="later3d.keras")
    monkeypatch.setattr(pretrained, "REGISTRY", entries)
    return entries


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def label_metadata(path):
    with tifffile.TiffFile(path) as tif:
        return tif.asarray(), json.loads(tif.pages[0].description)


def test_predict_by_name_segments_with_the_shipped_params(shipped, registry, tmp_path, capsys):
    root, raw = shipped
    affs, labels = tmp_path / "aff.zarr", tmp_path / "labels.tif"
    code, err = run_cli(["predict", root / "volume.tif", "-o", affs, "--model", "tiny3d",
                         "--segment", labels] + TILING, capsys)
    assert code == 0, err
    array = zarr.open_array(str(affs), mode="r")
    assert array.shape == (len(DEFAULT_OFFSETS_3D),) + raw.shape
    assert array.attrs["model"] == "tiny3d"
    ids, metadata = label_metadata(labels)
    assert ids.shape == raw.shape and ids.min() >= 1
    assert metadata["params"] == AffinityParams.from_dict(SHIPPED).to_dict()
    # the same as segmenting the written affinities with those parameters
    from fusionnet_tf.segmentation.affinities import segment_affinities

    expected, _ = segment_affinities(array[...], DEFAULT_OFFSETS_3D,
                                     AffinityParams.from_dict(SHIPPED))
    np.testing.assert_array_equal(ids, expected)


def test_segment_defaults_to_the_params_of_the_predicting_model(shipped, registry, tmp_path,
                                                                capsys):
    root, _ = shipped
    affs = tmp_path / "aff.zarr"
    assert run_cli(["predict", root / "volume.tif", "-o", affs, "--model", "tiny3d"] + TILING,
                   capsys)[0] == 0
    for extra in ([], ["--params", "tiny3d"]):
        out = tmp_path / f"seg{len(extra)}.tif"
        code, err = run_cli(["segment", affs, "-o", out, "--quiet"] + extra, capsys)
        assert code == 0, err
        assert label_metadata(out)[1]["params"] == AffinityParams.from_dict(SHIPPED).to_dict()


def test_segment_of_another_models_affinities_uses_the_defaults(shipped, registry, tmp_path,
                                                                capsys):
    root, _ = shipped
    model = tmp_path / "mine.keras"
    model.write_bytes((root / "tiny3d.keras").read_bytes())
    (tmp_path / "mine.offsets.json").write_text((root / "tiny3d.offsets.json").read_text())
    affs, out = tmp_path / "aff.zarr", tmp_path / "seg.tif"
    assert run_cli(["predict", root / "volume.tif", "-o", affs, "--model", model] + TILING,
                   capsys)[0] == 0
    assert run_cli(["segment", affs, "-o", out, "--quiet"], capsys)[0] == 0
    assert label_metadata(out)[1]["params"] == AffinityParams().to_dict()


@pytest.mark.parametrize("command", ["predict", "predict-volume"])
def test_unknown_model_name_is_one_line_listing_the_names(shipped, registry, tmp_path, capsys,
                                                          command):
    root, _ = shipped
    out = tmp_path / "out.zarr"
    argv = ([command, root / "volume.tif", "-o", out] if command == "predict"
            else [command, root / "volume.tif", out])
    code, err = run_cli(argv + ["--model", "nosuchmodel"], capsys)
    assert code == 2
    line, = err.strip().splitlines()
    assert "nosuchmodel" in line and "isbi2012" in line and "snemi3d" in line
    assert "tiny3d" in line
    assert not out.exists()


def test_model_not_shipped_yet_is_one_line(shipped, registry, tmp_path, capsys):
    root, _ = shipped
    out = tmp_path / "aff.zarr"
    code, err = run_cli(["predict", root / "volume.tif", "-o", out, "--model", "later3d"]
                        + TILING, capsys)
    assert code == 2
    line, = err.strip().splitlines()
    assert "later3d" in line and "not shipped" in line
    assert not out.exists()


def test_unknown_params_name_is_refused(shipped, registry, tmp_path, capsys):
    root, _ = shipped
    affs = tmp_path / "aff.zarr"
    assert run_cli(["predict", root / "volume.tif", "-o", affs, "--model", "tiny3d"] + TILING,
                   capsys)[0] == 0
    code, err = run_cli(["segment", affs, "-o", tmp_path / "seg.tif", "--params", "nosuch"],
                        capsys)
    assert code == 2 and "nosuch" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "seg.tif").exists()


def test_registry_files():
    isbi = pretrained.pretrained_model("isbi2012")
    assert pretrained.pretrained_path() == isbi.weights_path and isbi.weights_path.is_file()
    assert isbi.offsets_path is None
    snemi = pretrained.pretrained_model("snemi3d")
    assert snemi.kind == "affinities"
    assert snemi.offsets_path.name == "fusionnet3d_snemi3d.offsets.json"
    assert snemi.params_path.name == "fusionnet3d_snemi3d.segment.json"
    assert pretrained.resolve_model_spec("some/model.keras") == ("some/model.keras", None)
    assert pretrained.resolve_model_spec("isbi2012") == (str(isbi.weights_path), "isbi2012")


def test_predict_volume_by_name_then_segment_uses_the_shipped_params(shipped, registry,
                                                                     tmp_path, capsys):
    import h5py

    root, raw = shipped
    with h5py.File(tmp_path / "em.h5", "w") as handle:
        handle["raw"] = raw
    affs, out = tmp_path / "aff.zarr", tmp_path / "seg.tif"
    code, err = run_cli(["predict-volume", f"{tmp_path}/em.h5:/raw", affs, "--model", "tiny3d",
                         "--workers", "0", "--block", "16"] + TILING, capsys)
    assert code == 0, err
    code, err = run_cli(["segment", affs, "-o", out, "--quiet"], capsys)
    assert code == 0, err
    assert label_metadata(out)[1]["params"] == AffinityParams.from_dict(SHIPPED).to_dict()
