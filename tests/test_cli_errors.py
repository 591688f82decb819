"""A missing optional dependency is a one-line CLI error naming the pip extra, exit code 2."""

import configparser
import re
from pathlib import Path

import pytest

from fusionnet_tf import cli
from fusionnet_tf.cli import export as export_cli
from fusionnet_tf.cli import main

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
# pip distribution -> the top-level module(s) it installs, where the names differ
DISTRIBUTION_MODULES = {"ai-edge-litert": ("ai_edge_litert",), "bioimageio.core": ("bioimageio",),
                        "bioimageio.spec": ("bioimageio",), "dask[distributed]": ("dask",
                                                                                  "distributed"),
                        "cloud-volume": ("cloudvolume",), "ome-zarr": ("ome_zarr",)}


def setup_cfg_extras():
    """{extra: set of top-level modules} from setup.cfg's [options.extras_require]."""
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    extras = {}
    for extra, text in parser["options.extras_require"].items():
        names = (re.split(r"[<>=!~ ;]", line.strip())[0] for line in text.splitlines())
        extras[extra] = {module for name in names if name
                         for module in DISTRIBUTION_MODULES.get(name, (name,))}
    return extras


def test_bioimageio_extra_installs_what_the_onnx_weights_need():
    assert {"tf2onnx", "onnx", "onnxruntime"} <= setup_cfg_extras()["bioimageio"]


def test_extra_modules_mirror_setup_cfg():
    extras = setup_cfg_extras()
    for extra, modules in cli.EXTRA_MODULES.items():
        assert set(modules) == extras[extra], extra


def fail_with(monkeypatch, exc):
    def run(args):
        raise exc

    monkeypatch.setattr(export_cli, "run", run)


def run_export(tmp_path, export_format="onnx"):
    return main(["export", "--model", str(tmp_path / "m.keras"), "--format", export_format,
                 "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("export_format, extra", [("onnx", "export"),
                                                  ("bioimageio", "bioimageio")])
def test_missing_module_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys,
                                                     export_format, extra):
    fail_with(monkeypatch, ModuleNotFoundError("No module named 'tf2onnx'", name="tf2onnx"))
    assert run_export(tmp_path, export_format) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"fusionnet export: error: the Python module 'tf2onnx' is not installed; "
                    f"install it with: pip install 'fusionnet-tf[{extra}]'")


def test_missing_submodule_maps_to_its_package_extra(monkeypatch, tmp_path, capsys):
    fail_with(monkeypatch, ModuleNotFoundError("No module named 'bioimageio.core'",
                                               name="bioimageio.core"))
    assert run_export(tmp_path, "bioimageio") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "'bioimageio.core'" in line and line.endswith("pip install 'fusionnet-tf[bioimageio]'")


def test_missing_module_without_extra_is_still_one_line(monkeypatch, tmp_path, capsys):
    fail_with(monkeypatch, ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt"))
    assert run_export(tmp_path) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("fusionnet export: error: the Python module 'tensorrt' is not installed; "
                    "install the package that provides it")


def test_wrapping_import_error_keeps_its_message(monkeypatch, tmp_path, capsys):
    try:
        try:
            raise ModuleNotFoundError("No module named 'zarr'", name="zarr")
        except ImportError as cause:
            raise ImportError("block-wise volume prediction needs zarr\n(No module named "
                              "'zarr')") from cause
    except ImportError as exc:
        fail_with(monkeypatch, exc)
    assert run_export(tmp_path) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("fusionnet export: error: block-wise volume prediction needs zarr (No module "
                    "named 'zarr'); install it with: pip install 'fusionnet-tf[volumes]'")


@pytest.mark.parametrize("exc", [
    ModuleNotFoundError("No module named 'fusionnet_tf.nope'", name="fusionnet_tf.nope"),
    ImportError("cannot import name 'nope' from 'fusionnet_tf.data'", name="fusionnet_tf.data"),
    ImportError("libcudart.so.12: cannot open shared object file"),
    ModuleNotFoundError("No module named 'x'"),  # no name: nothing to advise
])
def test_our_own_import_bugs_keep_their_traceback(monkeypatch, tmp_path, exc):
    fail_with(monkeypatch, exc)
    with pytest.raises(ImportError) as raised:
        run_export(tmp_path)
    assert raised.value is exc
