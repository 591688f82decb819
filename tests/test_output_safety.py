"""Issue 26: no command replaces a user's folder or store, and faults are one line, exit 2.

The refusals run as the user runs them, in a subprocess, with a ``tensorflow``
package on the path that stops the process if anything imports it: every check
here must happen before TensorFlow (and so before any prediction) starts.
"""

import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main

REPO = Path(__file__).resolve().parents[1]
TENSORFLOW_IMPORTED = "TENSORFLOW WAS IMPORTED"


@pytest.fixture(scope="module")
def poisoned_path(tmp_path_factory):
    """A folder holding a ``tensorflow`` package that exits the process when imported."""
    root = tmp_path_factory.mktemp("poison")
    (root / "tensorflow").mkdir()
    (root / "tensorflow" / "__init__.py").write_text(
        f"raise SystemExit({TENSORFLOW_IMPORTED!r})\n")
    return root


def fusionnet(args, cwd, poisoned_path=None, env=None):
    """Run ``python -m fusionnet_tf ARGS`` in ``cwd``; return ``(exit code, stderr lines)``."""
    paths = ([str(poisoned_path)] if poisoned_path else []) + [str(REPO)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(env or {})}
    result = subprocess.run([sys.executable, "-m", "fusionnet_tf", *map(str, args)], cwd=cwd,
                            env=environment, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small inputs: an EM stack, a membrane map (TIFF and zarr) and an EM volume (zarr)."""
    import zarr

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    tifffile.imwrite(root / "image.tif", rng.integers(0, 256, (2, 48, 48), dtype=np.uint8),
                     photometric="minisblack")
    membrane = np.zeros((2, 48, 48), np.float32)
    membrane[:, 23:25, :] = membrane[:, :, 23:25] = 1.0
    tifffile.imwrite(root / "pred.tif", membrane, photometric="minisblack")
    zarr.open_array(str(root / "pred.zarr"), mode="w", shape=membrane.shape,
                    dtype="float32")[...] = membrane
    zarr.open_array(str(root / "em.zarr"), mode="w", shape=(2, 48, 48),
                    dtype="uint8")[...] = rng.integers(0, 256, (2, 48, 48), dtype=np.uint8)
    return root


def user_folder(path):
    """A folder of the user's: a thesis."""
    path.mkdir()
    (path / "thesis.txt").write_text("four years of work")


def user_zarr_group(path):
    """A zarr group of the user's with ``raw`` and ``pred`` arrays."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=(2, 8, 8), dtype="uint8")[...] = 7
    group.create_array("pred", shape=(2, 8, 8), dtype="float32")[...] = 0.5


def png_folder_with_a_thesis(path):
    """What a PNG-folder output writes, plus one file of the user's: not ours to replace."""
    path.mkdir()
    (path / "slice_0000.png").write_bytes(b"png")
    (path / "thesis.txt").write_text("four years of work")


def snapshot(path):
    """{relative path: bytes} of every file below ``path``."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file()}


# (output kind, victim maker, arguments with {victim} and {inputs}); every writer of every
# command, each over a folder or store of the user's
CASES = [
    ("predict tiff", user_folder, "predict {inputs}/image.tif -o {victim}.tif"),
    ("predict hdf5", user_folder, "predict {inputs}/image.tif -o {victim}.h5:/p"),
    ("predict png", user_folder, "predict {inputs}/image.tif -o {victim}.png"),
    ("predict png folder", user_folder, "predict {inputs}/image.tif -o {victim}"),
    ("predict png folder (ours + thesis)", png_folder_with_a_thesis,
     "predict {inputs}/image.tif -o {victim}"),
    ("predict --overlay folder", user_folder,
     "predict {inputs}/image.tif -o {tmp}/p.tif --overlay {victim}"),
    ("predict --segment zarr (folder)", user_folder,
     "predict {inputs}/image.tif -o {tmp}/p.tif --segment {victim}.zarr"),
    ("predict --segment zarr (group)", user_zarr_group,
     "predict {inputs}/image.tif -o {tmp}/p.tif --segment {victim}.zarr"),
    ("predict --segment-overlay folder", user_folder,
     "predict {inputs}/image.tif -o {tmp}/p.tif --segment {tmp}/n.tif --segment-overlay {victim}"),
    ("segment tiff", user_folder, "segment {inputs}/pred.tif -o {victim}.tif"),
    ("segment hdf5", user_folder, "segment {inputs}/pred.tif -o {victim}.h5"),
    ("segment zarr (folder)", user_folder, "segment {inputs}/pred.tif -o {victim}.zarr"),
    ("segment zarr (group)", user_zarr_group, "segment {inputs}/pred.tif -o {victim}.zarr"),
    ("segment --overlay folder", png_folder_with_a_thesis,
     "segment {inputs}/pred.tif -o {tmp}/n.tif --image {inputs}/image.tif --overlay {victim}"),
    ("predict-volume zarr (folder)", user_folder,
     "predict-volume {inputs}/em.zarr {victim}.zarr --overwrite"),
    ("predict-volume zarr (group)", user_zarr_group,
     "predict-volume {inputs}/em.zarr {victim}.zarr --overwrite"),
    ("segment-volume zarr (group)", user_zarr_group,
     "segment-volume {inputs}/pred.zarr {victim}.zarr --overwrite"),
]


@pytest.mark.parametrize("kind, make_victim, command", CASES, ids=[case[0] for case in CASES])
def test_no_output_replaces_a_users_folder_or_store(tmp_path, inputs, poisoned_path, kind,
                                                    make_victim, command):
    victim_name = "victim"
    suffix = next((s for s in (".tif", ".h5", ".png", ".zarr")
                   if f"{{victim}}{s}" in command), "")
    victim = tmp_path / f"{victim_name}{suffix}"
    make_victim(victim)
    before, listing = snapshot(victim), sorted(os.listdir(tmp_path))
    argv = command.format(victim=tmp_path / victim_name, inputs=inputs, tmp=tmp_path).split()
    code, lines = fusionnet(argv, tmp_path, poisoned_path)
    assert code == 2 and len(lines) == 1, (kind, lines)
    assert str(victim) in lines[0] and TENSORFLOW_IMPORTED not in lines[0]
    assert snapshot(victim) == before  # untouched
    assert sorted(os.listdir(tmp_path)) == listing  # nothing else written, no temporary left


def test_outputs_of_an_earlier_run_are_refreshed(tmp_path, inputs, capsys):
    """Re-running a command replaces its own folder and zarr outputs (and only those)."""
    argv = ["segment", str(inputs / "pred.tif"), "-o", str(tmp_path / "n.zarr"), "--image",
            str(inputs / "image.tif"), "--overlay", str(tmp_path / "segments"), "--quiet"]
    for _ in range(2):
        assert main(argv) == 0, capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "segments")) == ["slice_0000.png", "slice_0001.png"]
    assert "uint64" in capsys.readouterr().err  # the dtype the zarr store holds


@pytest.mark.parametrize("command", [
    "predict-volume {inputs}/em.zarr {inputs}/em.zarr/inner.zarr",
    "segment-volume {inputs}/pred.zarr {inputs}/pred.zarr/inner.zarr",
])
def test_volume_output_inside_the_input_store_is_refused(tmp_path, inputs, poisoned_path,
                                                         command):
    before = snapshot(inputs)
    code, lines = fusionnet(command.format(inputs=inputs).split(), tmp_path, poisoned_path)
    assert code == 2 and len(lines) == 1 and "would overwrite INPUT" in lines[0], lines
    assert snapshot(inputs) == before


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("fault", ["loop input", "loop output", "serving url", "unwritable",
                                   "corrupt model", "fake tiff", "truncated tiff", "huge tile"])
def test_faults_are_one_line_exit_2_before_tensorflow(tmp_path, inputs, poisoned_path, fault):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "bad.keras").write_text("not a model")
    (tmp_path / "fake.tif").write_text("hello")
    (tmp_path / "cut.tif").write_bytes((inputs / "image.tif").read_bytes()[:300])
    image, out = inputs / "image.tif", tmp_path / "out.tif"
    url = f"http://127.0.0.1:{unused_port()}/v1/models/fusionnet"
    argv, expected = {
        "loop input": (["predict", "loop1", "-o", out], "INPUT loop1: symbolic link loop"),
        "loop output": (["predict", image, "-o", "loop1"], "--output loop1: symbolic link loop"),
        "serving url": (["predict", image, "-o", out, "--serving-url", url],
                        f"--serving-url {url}: cannot reach"),
        "unwritable": (["predict", image, "-o", "/proc/x.tif"],
                       "--output /proc/x.tif: cannot write into the output folder /proc"),
        "corrupt model": (["predict", image, "-o", out, "--model", "bad.keras"],
                          "model bad.keras is not a valid model file"),
        "fake tiff": (["predict", "fake.tif", "-o", out], "fake.tif: cannot read this TIFF"),
        "truncated tiff": (["predict", "cut.tif", "-o", out], "cut.tif: cannot read this TIFF"),
        "huge tile": (["predict", image, "-o", out, "--tile-size", "1000000"],
                      "--tile-size 1000000 is larger than the 48x48 slices need"),
    }[fault]
    code, lines = fusionnet(argv, tmp_path, poisoned_path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"fusionnet predict: error: {expected}"), lines
    assert not out.exists() and not list(tmp_path.glob(".*tif*"))
    if fault == "huge tile":
        assert "TiB of memory" in lines[0]


def one_error_line(argv, capsys):
    code = main([str(arg) for arg in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    return lines[0]


def test_a_zip_that_is_no_keras_model_is_not_a_valid_model_file(tmp_path, inputs, capsys):
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    line = one_error_line(["predict", inputs / "image.tif", "-o", tmp_path / "p.tif", "--model",
                           tmp_path / "bad.keras"], capsys)
    assert "bad.keras is not a valid Keras model file" in line


def test_messages_name_the_options_typed(tmp_path, inputs, tiny_model_file, capsys):
    line = one_error_line(["predict", inputs / "image.tif", "-o", tmp_path / "p.tif", "--model",
                           tiny_model_file, "--tile-size", "30", "--overlap", "8", "--quiet"],
                          capsys)
    assert "--tile-size" in line and "30" in line and "tile_shape" not in line
    for argv, option in ((["predict", inputs / "image.tif", "-o", tmp_path / "p.tif",
                           "--batch-size", "0"], "--batch-size"),
                         (["predict-volume", inputs / "em.zarr", tmp_path / "o.zarr",
                           "--block", "0"], "--block")):
        line = one_error_line(argv, capsys)
        assert line.split(": error: ")[1].startswith(option), line
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, np.arange(48 * 48 * 2, dtype=np.float32).reshape(2, 48, 48) / 7)
    line = one_error_line(["evaluate", "--labels", labels, "--pred", inputs / "pred.tif"], capsys)
    assert str(labels) in line and "pass --label-threshold T" in line and "threshold=" not in line
    assert line.count(",") < 6  # a few of the values, not ten floats


def test_progress_bar_off_a_terminal_draws_0_of_n_once(capsys):
    """The engine line printed above the bar (autotune) must not make it draw 0/3 twice."""
    from fusionnet_tf.inference.autotune import print_to_stderr
    from fusionnet_tf.inference.predictor import _progress_bar

    with _progress_bar(3, True) as bar:
        print_to_stderr("fusionnet: auto engine runs plain")
        for _ in range(3):
            bar.update(1)
    err = capsys.readouterr().err
    assert err.count("0/3") == 1 and err.count("3/3") >= 1, err
