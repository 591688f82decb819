"""Issue 26: the README's Quickstart runs twice, a foreign KERAS_BACKEND is overridden, and
``segment`` warns about a raw EM image. The subprocess tests are marked ``large``.

The Quickstart commands are read from README.md and run as written (but the
install and the test run) in a temporary folder, twice; to keep the test
short, the example stack there is the first slice of the shipped one.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "fusionnet_tf/examples/isbi2012_test_slices_0-2.tif"
OUTPUTS = ("membranes.tif", "neurons.tif", "overlays", "segments")


def readme_quickstart():
    """The shell commands of the README's Quickstart block, without install and tests."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, re.S).group(1)
    commands = []
    for line in block.strip().splitlines():
        for command in line.split("&&"):
            command = command.strip()
            if not command.startswith(("pip ", "python -m pytest")):
                commands.append(command)
    return commands


def environment(**extra):
    """This checkout first on the path, the venv's ``fusionnet`` script on PATH."""
    env = {name: value for name, value in os.environ.items() if name != "KERAS_BACKEND"}
    env.update(PYTHONPATH=str(REPO), **extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_shell(command, cwd, **extra):
    result = subprocess.run(command, shell=True, cwd=cwd, env=environment(**extra),
                            capture_output=True, text=True, timeout=1200)
    return result.returncode, result.stderr


def read_outputs(folder):
    """{name: array} of every Quickstart output (TIFFs, and each PNG of the folders)."""
    arrays = {}
    for name in OUTPUTS:
        path = folder / name
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".png":
                from PIL import Image

                arrays[f"{name}/{file.name}"] = np.asarray(Image.open(file))
            else:
                arrays[name] = tifffile.imread(file)
    return arrays


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A folder where the Quickstart ran twice: ``(folder, first outputs, second outputs)``."""
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / EXAMPLE).parent.mkdir(parents=True)
    tifffile.imwrite(folder / EXAMPLE, tifffile.imread(REPO / EXAMPLE)[:1],
                     photometric="minisblack")
    commands = readme_quickstart()
    assert commands and all(command.startswith("fusionnet ") for command in commands)
    runs, errors = [], []
    for _ in range(2):
        for command in commands:
            code, err = run_shell(command, folder)
            assert code == 0, (command, err)
            errors.append(err)
        runs.append(read_outputs(folder))
    return folder, runs[0], runs[1], errors


@pytest.mark.large
def test_quickstart_runs_twice_with_equal_outputs(quickstart):
    _, first, second, errors = quickstart
    # KERAS_BACKEND unset (environment()): no word about it
    assert not [err for err in errors if "KERAS_BACKEND" in err]
    assert {"membranes.tif", "neurons.tif", "overlays/slice_0000.png",
            "segments/slice_0000.png"} <= set(first)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_quickstart_outputs_are_ignored_by_git():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    for name in OUTPUTS:
        assert f"/{name}" in ignored or f"/{name}/" in ignored, name


def segment_warnings(pred, folder, capsys):
    from fusionnet_tf.cli import main

    assert main(["segment", str(pred), "-o", str(folder / "labels.tif"), "--quiet"]) == 0
    return [line for line in capsys.readouterr().err.splitlines() if ": warning: " in line]


def test_raw_em_warning_for_the_example_not_for_a_prediction(tmp_path, capsys):
    from fusionnet_tf.cli import main

    [line] = segment_warnings(REPO / EXAMPLE, tmp_path, capsys)
    assert line.startswith("fusionnet segment: warning: PRED ") and "raw EM image" in line
    tifffile.imwrite(tmp_path / "slice.tif", tifffile.imread(REPO / EXAMPLE)[:1])
    assert main(["predict", str(tmp_path / "slice.tif"), "-o", str(tmp_path / "membranes.tif"),
                 "--tta", "1", "--quiet"]) == 0  # the shipped model
    assert segment_warnings(tmp_path / "membranes.tif", tmp_path, capsys) == []


@pytest.fixture(scope="module")
def backend_runs(tmp_path_factory, tiny_model_file):
    """``fusionnet predict`` with KERAS_BACKEND torch and jax: {backend: (code, err, out)},
    and ``None``: the prediction in this process (TensorFlow), ``(0, "", out)``.

    With KERAS_BACKEND unset nothing is said: checked on the Quickstart's runs.
    """
    from fusionnet_tf.data import normalize
    from fusionnet_tf.inference import Predictor

    folder = tmp_path_factory.mktemp("backend")
    image = np.random.default_rng(0).integers(0, 256, (1, 40, 40), dtype=np.uint8)
    tifffile.imwrite(folder / "image.tif", image)
    # one call: the auto engine runs plain, in both processes
    runs = {None: (0, "", Predictor(str(tiny_model_file), tile_shape=32, overlap=8, tta=1,
                                    engine="plain").predict(normalize(image, mode="slice")[0]))}
    for backend in ("torch", "jax"):
        out = folder / f"out-{backend}.tif"
        code, err = run_shell(f"fusionnet predict image.tif -o {out.name} --model "
                              f"{tiny_model_file} --tile-size 32 --overlap 8 --tta 1 --quiet",
                              folder, KERAS_BACKEND=backend)
        runs[backend] = (code, err, tifffile.imread(out) if out.exists() else None)
    return runs


@pytest.mark.large
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_foreign_keras_backend_runs_on_tensorflow_with_one_warning(backend_runs, backend):
    code, err, output = backend_runs[backend]
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "KERAS_BACKEND" in line]
    assert warnings == [f"fusionnet-tf: warning: KERAS_BACKEND={backend} overridden: this "
                        f"package runs Keras on TensorFlow"], err
    # TensorFlow's result; another process may pick other oneDNN kernels (~2e-6)
    np.testing.assert_allclose(output, backend_runs[None][2], rtol=0, atol=1e-5)


def test_keras_imported_with_another_backend_is_one_line(monkeypatch):
    import types

    from fusionnet_tf.backend import use_tensorflow_backend

    fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "torch"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(ImportError) as raised:
        use_tensorflow_backend()
    message = str(raised.value)
    assert "\n" not in message and "'torch' backend" in message
    assert "KERAS_BACKEND=tensorflow" in message
