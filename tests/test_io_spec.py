"""One spec parser (``io.spec.parse_spec``) for every reader, writer and command (issue 24).

Each spec form is parsed by hand here into its expected ``(path, key, kind)``;
every entry point that splits specs (readers, writers, volume storage,
segmentation and affinity I/O, the output guards, the training config check)
must give the same answer. Round-trips write with ``io.files`` and read back
through the readers and the volume storage under every spelling of the spec.
"""

import ast
from pathlib import Path

import h5py
import numpy as np
import pytest

from fusionnet_tf.data import affinity_io, readers
from fusionnet_tf.inference import writers
from fusionnet_tf.io import files, outputs
from fusionnet_tf.io.spec import Spec, parse_spec
from fusionnet_tf.segmentation import io as seg_io
from fusionnet_tf.training.config import _stack_path
from fusionnet_tf.volumes import storage

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "fusionnet_tf"

# (spec text, expected path, key, kind), written out by hand
FORMS = [
    ("stack.tif", "stack.tif", None, "tiff"),
    ("stack.tiff", "stack.tiff", None, "tiff"),
    ("X.TIF", "X.TIF", None, "tiff"),
    ("slice.png", "slice.png", None, "image"),
    ("em.h5", "em.h5", None, "hdf5"),
    ("em.h5:raw", "em.h5", "raw", "hdf5"),
    ("em.h5:/a/b", "em.h5", "a/b", "hdf5"),
    ("em.hdf5:raw", "em.hdf5", "raw", "hdf5"),
    ("em.hdf:/raw", "em.hdf", "raw", "hdf5"),
    ("FILE.H5:key", "FILE.H5", "key", "hdf5"),
    ("em.h5:/t:0", "em.h5", "t:0", "hdf5"),
    ("run:1/em.h5:raw", "run:1/em.h5", "raw", "hdf5"),
    ("store.zarr", "store.zarr", None, "zarr"),
    ("store.zarr/", "store.zarr", None, "zarr"),
    ("store.zarr/raw", "store.zarr", "raw", "zarr"),
    ("store.zarr:raw", "store.zarr", "raw", "zarr"),
    ("store.zarr:/a/b", "store.zarr", "a/b", "zarr"),
    ("STORE.ZARR:/raw", "STORE.ZARR", "raw", "zarr"),
    ("image.ome.zarr/labels/cells", "image.ome.zarr", "labels/cells", "zarr"),
    ("volume.n5/raw", "volume.n5", "raw", "n5"),
    ("volume.n5:/raw", "volume.n5", "raw", "n5"),
    ("slices", "slices", None, "folder"),
]


def _stored_in_view(spec):
    """What ``io.outputs.stored_in`` should say for an expected Spec."""
    kind = {"hdf5": "hdf5", "zarr": "zarr", "n5": "zarr"}.get(spec.kind, "file")
    return spec.path, spec.key if spec.kind == "hdf5" else None, kind


def _affinity_view(spec):
    if spec.kind not in ("tiff", "hdf5", "zarr"):
        return ValueError
    return spec.kind, spec.path, spec.key


def _output_kind_view(spec):
    kinds = {"tiff": "tiff", "hdf5": "hdf5", "folder": "png_folder", "image": "png"}
    return kinds.get(spec.kind, ValueError)


def _label_kind_view(spec):
    if spec.kind in ("tiff", "hdf5") or (spec.kind == "zarr" and spec.key is None):
        return spec.kind
    return ValueError


# entry point: (how it answers for a spec text, what it must answer for the expected Spec)
ENTRY_POINTS = {
    "io.spec.parse_spec": (parse_spec, lambda spec: spec),
    "data.readers": (readers.parse_spec, lambda spec: spec),
    "io.outputs.stored_in": (outputs.stored_in, _stored_in_view),
    "data.affinity_io.affinity_format": (affinity_io.affinity_format, _affinity_view),
    "inference.writers.output_kind": (writers.output_kind, _output_kind_view),
    "segmentation.io.label_kind": (seg_io.label_kind, _label_kind_view),
    "training.config._stack_path": (_stack_path, lambda spec: spec.path),
}


def _answer(function, text):
    try:
        return function(text)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("text, path, key, kind", FORMS, ids=[f[0] for f in FORMS])
def test_every_entry_point_splits_a_spec_the_same_way(entry, text, path, key, kind):
    function, view = ENTRY_POINTS[entry]
    if entry == "segmentation.io.label_kind" and text.startswith("image.ome.zarr"):
        pytest.skip("IMAGE.ome.zarr/labels/NAME is an OME-Zarr label output by its name")
    expected = Spec(Path(path), key, kind)
    assert _answer(function, text) == view(expected)


def _make(root, spec):
    """Create on disk what ``spec`` names (an empty file, HDF5 file, zarr or N5 folder)."""
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.kind == "hdf5":
        with h5py.File(path, "w") as handle:
            handle.create_dataset(spec.key or "raw", data=np.zeros((1, 2, 2), np.uint8))
    elif spec.kind in ("zarr", "n5", "folder"):
        (path / (spec.key or "")).mkdir(parents=True, exist_ok=True)
        (path / "attributes.json" if spec.kind == "n5" else path / ".zgroup").write_text("{}")
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("text, path, key, kind",
                         [f for f in FORMS if f[3] in ("hdf5", "zarr", "n5")],
                         ids=[f[0] for f in FORMS if f[3] in ("hdf5", "zarr", "n5")])
def test_volume_storage_splits_existing_specs_the_same_way(text, path, key, kind, tmp_path,
                                                           monkeypatch):
    expected = Spec(Path(path), key, kind)
    monkeypatch.chdir(tmp_path)
    _make(tmp_path, expected)
    assert storage.existing_spec(text) == expected
    assert parse_spec(text) == expected  # the disk does not change a container's split


def test_a_store_named_otherwise_splits_at_the_last_colon(tmp_path):
    store = tmp_path / "volume"  # a zarr store without .zarr: its metadata say so
    (store / "raw").mkdir(parents=True)
    (store / ".zgroup").write_text("{}")
    assert parse_spec(f"{store}:/raw") == Spec(store, "raw", "zarr")
    assert parse_spec(store) == Spec(store, None, "zarr")
    assert parse_spec(f"{tmp_path}/missing:/raw") == Spec(tmp_path / "missing:/raw", None,
                                                          "folder")


def test_an_hdf5_file_without_its_suffix_is_found_by_its_signature(tmp_path):
    path = tmp_path / "volume.data"
    with h5py.File(path, "w") as handle:
        handle["raw"] = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    assert parse_spec(path) == Spec(path, None, "hdf5")
    assert parse_spec(f"{path}:/raw") == Spec(path, "raw", "hdf5")
    np.testing.assert_array_equal(readers.read_stack(f"{path}:/raw"),
                                  np.arange(8).reshape(2, 2, 2))


# --------------------------------------------------------------------------- #
# Round-trips: io.files writes, the readers and the volume storage read back
# --------------------------------------------------------------------------- #

DATA = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 24


def test_tiff_round_trip(tmp_path):
    path = tmp_path / "PRED.TIF"
    files.write_tiff(path, DATA, {"convention": "membrane"})
    np.testing.assert_array_equal(readers.read_stack(str(path)), DATA)
    np.testing.assert_array_equal(storage.open_any_volume(str(path))[0], DATA)


@pytest.mark.parametrize("written, read", [("em.h5:/a/b", "em.h5:a/b"),
                                           ("EM.HDF5:raw", "EM.HDF5:/raw"),
                                           ("em.h5:/t:0", "em.h5:t:0")])
def test_hdf5_round_trip(written, read, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(written)
    files.write_hdf5(spec.path, spec.key, DATA, {"convention": "membrane", "shape": [2, 3, 4]})
    files.write_hdf5(spec.path, "other", DATA * 0, {})  # a second dataset is kept beside it
    np.testing.assert_array_equal(readers.read_stack(read), DATA)
    volume, name = storage.open_volume(read)
    np.testing.assert_array_equal(volume[...], DATA)
    volume.file.close()
    assert name == f"{tmp_path / spec.path}:/{spec.key}"
    with h5py.File(spec.path, "r") as handle:
        assert handle[spec.key].attrs["shape"] == "[2, 3, 4]"
        assert handle[spec.key].chunks == (1, 3, 4)


def test_zarr_round_trip_root_array(tmp_path):
    path = tmp_path / "pred.zarr"
    files.write_zarr(path, DATA, {"kind": "probability"})
    for spelling in (str(path), f"{path}/"):
        np.testing.assert_array_equal(readers.read_stack(spelling), DATA)
        np.testing.assert_array_equal(storage.open_volume(spelling)[0][...], DATA)
    np.testing.assert_array_equal(seg_io.read_membrane(str(path)), DATA)


def test_zarr_round_trip_every_spelling_of_a_key(tmp_path):
    zarr = files.import_zarr()
    path = tmp_path / "em.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=DATA.shape, dtype=DATA.dtype)[...] = DATA
    group.create_array("labels", shape=DATA.shape, dtype="uint8")[...] = 1
    names = set()
    for spelling in (f"{path}/raw", f"{path}:raw", f"{path}:/raw", f"{path}/raw/"):
        np.testing.assert_array_equal(readers.read_stack(spelling), DATA)
        volume, name = storage.open_volume(spelling)
        np.testing.assert_array_equal(volume[...], DATA)
        names.add(name)
    assert names == {f"{path}:/raw"}  # one array, one recorded name


def test_resume_accepts_the_name_an_older_version_recorded():
    assert storage.same_input_name("/d/em.zarr/raw", "/d/em.zarr:/raw")
    assert storage.same_input_name("/d/img.ome.zarr/labels/a:/0", "/d/img.ome.zarr:/labels/a/0")
    assert not storage.same_input_name("/d/em.zarr/raw", "/d/em.zarr:/labels")
    assert not storage.same_input_name("/d/em.zarr:/raw", "/e/em.zarr:/raw")


# --------------------------------------------------------------------------- #
# Errors: one line naming the spec
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("text", ["notes.txt", "em.h5x:/raw", "em.he5:raw", "stack.TXT"])
def test_unknown_extension_is_one_line_naming_the_spec(text):
    with pytest.raises(ValueError) as info:
        parse_spec(text)
    message = str(info.value)
    assert message.startswith(f"{text}: unknown file extension") and "\n" not in message


def test_readers_name_a_spec_with_an_unknown_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt: unknown file extension '\.txt'"):
        readers.read_stack(path)


def test_hdf5_without_a_key_needs_one_when_it_holds_several(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as handle:
        handle["a"] = np.zeros((1, 2, 2), np.uint8)
        handle["b"] = np.zeros((1, 2, 2), np.uint8)
    with pytest.raises(ValueError) as info:
        readers.read_stack(str(path))
    message = str(info.value)
    assert f"give the dataset as {path}:/KEY" in message and "2 datasets: a, b" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- #
# One home: guards, writers, no private imports, no cli cycle
# --------------------------------------------------------------------------- #


def test_check_not_input_takes_the_output_first(tmp_path):
    raw = tmp_path / "em.h5"
    with h5py.File(raw, "w") as handle:
        handle["raw"] = np.zeros((1, 2, 2), np.uint8)
    outputs.check_not_input(f"{raw}:/prediction", f"{raw}:/raw")  # another key: allowed
    with pytest.raises(ValueError, match=r"^OUT .*em\.h5:raw is the IN dataset"):
        outputs.check_not_input(f"{raw}:raw", f"{raw}:/raw", "OUT", "IN")
    with pytest.raises(ValueError, match=r"^--output .*em\.zarr would overwrite INPUT"):
        outputs.check_not_input(tmp_path / "em.zarr", f"{tmp_path / 'em.zarr'}/raw")


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]


# (file, module, name) of imports of private names still allowed: none (the tuner's helpers,
# the predictor's engine and the CLI's affinity-option check became public names)
KNOWN_PRIVATE_IMPORTS = set()


def private_imports(package_dir=PACKAGE_DIR):
    """``(file, module, name)`` of every ``from fusionnet_tf.x import _name`` (not a module)."""
    found = set()
    for path in sorted(package_dir.rglob("*.py")):
        for node in _imports(path):
            module = node.module or ""
            for alias in node.names:
                name = alias.name
                is_module = (package_dir.parent / Path(*module.split("."), name + ".py")).exists()
                if module.startswith("fusionnet_tf") and name.startswith("_") \
                        and not name.startswith("__") and not is_module:
                    found.add((path.relative_to(package_dir.parent).as_posix(), module, name))
    return found


def test_no_module_imports_another_modules_private_name():
    found = private_imports()
    assert found - KNOWN_PRIVATE_IMPORTS == set()
    assert KNOWN_PRIVATE_IMPORTS - found == set(), "fixed: remove it from KNOWN_PRIVATE_IMPORTS"


def test_the_private_import_scan_finds_one(tmp_path):
    package = tmp_path / "fusionnet_tf"
    (package / "seg").mkdir(parents=True)
    (package / "seg" / "io.py").write_text(
        "def f():\n    from fusionnet_tf.inference.writers import _write_hdf5, write_tiff\n")
    (package / "_compat.py").write_text("")
    (package / "run.py").write_text("from fusionnet_tf import _compat\n")
    assert private_imports(package) == {("fusionnet_tf/seg/io.py",
                                         "fusionnet_tf.inference.writers", "_write_hdf5")}


def test_cli_segment_does_not_import_cli_predict():
    """predict imports segment (its --segment options); the way back would close a cycle."""
    segment = {node.module for node in _imports(PACKAGE_DIR / "cli" / "segment.py")}
    predict = {node.module for node in _imports(PACKAGE_DIR / "cli" / "predict.py")}
    assert "fusionnet_tf.cli.segment" in predict  # the scan reads the imports at all
    assert "fusionnet_tf.cli.predict" not in segment


def test_one_home_for_the_writers_and_guards():
    assert seg_io.write_hdf5 is writers.write_hdf5 is files.write_hdf5
    assert seg_io.write_tiff is files.write_tiff is affinity_io.write_tiff
    assert not hasattr(storage, "check_not_input")
    assert not (PACKAGE_DIR / "io_utils.py").exists()


def test_staged_folder_replaces_on_success_and_keeps_the_old_folder_on_error(tmp_path):
    from fusionnet_tf.io.outputs import staged_folder

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(folder) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("fails half-way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    assert sorted(p.name for p in folder.iterdir()) == ["old.txt"]
    with staged_folder(folder) as tmp:
        assert tmp.parent == tmp_path and tmp != folder
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in folder.iterdir()) == ["new.txt"]
