"""``fusionnet export`` dispatches on an explicit table: no format falls through to another."""

import argparse
import types
from pathlib import Path

import pytest

from fusionnet_tf.cli import export as export_cli
from fusionnet_tf.cli import main


def test_every_listed_format_has_its_own_exporter():
    assert set(export_cli.EXPORTERS) == set(export_cli.FORMATS)
    assert len(set(export_cli.EXPORTERS.values())) == len(export_cli.EXPORTERS)


@pytest.fixture
def tensorrt_must_not_run(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an unknown format reached the TensorRT exporter")

    monkeypatch.setitem(export_cli.EXPORTERS, "tensorrt", fail)


def test_unknown_format_is_an_error_not_tensorrt(tensorrt_must_not_run):
    args = argparse.Namespace(format="tflite")
    with pytest.raises(ValueError, match="--format must be one of .*received 'tflite'"):
        export_cli.export(args, model=None, extra={})


def test_cli_format_listed_but_without_exporter_exits_2(tensorrt_must_not_run, monkeypatch,
                                                        tmp_path, capsys):
    # a format added to the --format choices but forgotten in EXPORTERS
    monkeypatch.setattr(export_cli, "FORMATS", export_cli.FORMATS + ("newformat",))
    code = main(["export", "--model", str(tmp_path / "missing.keras"), "--format", "newformat",
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("fusionnet export: error: --format must be one of saved_model, ")
    assert line.endswith("; received 'newformat'")


# === --name default and bioimageio-only options ===

@pytest.fixture
def captured_exports(monkeypatch, tmp_path):
    """Stub model loading and every exporter; returns the args each export received."""
    calls = []

    def fake_load(spec):
        return types.SimpleNamespace(name="fusionnet_b4"), Path(spec)

    def fake_export(args, model, extra):
        calls.append(args)
        return tmp_path / "artifact"

    monkeypatch.setattr(export_cli, "load_keras_model", fake_load)
    monkeypatch.setattr(export_cli, "card_extra", lambda args, path: {})
    for export_format in export_cli.EXPORTERS:
        monkeypatch.setitem(export_cli.EXPORTERS, export_format, fake_export)
    return calls


@pytest.mark.parametrize("model_file, export_format, expected", [
    ("runs/em_membranes.keras", "bioimageio", "em_membranes"),
    ("runs/try1/best.keras", "bioimageio", "fusionnet_b4"),  # checkpoint stem: the model's name
    ("runs/em_membranes.keras", "onnx", "fusionnet"),
    ("runs/em_membranes.keras", "saved_model", "fusionnet"),
])
def test_cli_default_name(captured_exports, tmp_path, model_file, export_format, expected):
    code = main(["export", "--model", model_file, "--format", export_format,
                 "--output", str(tmp_path / "out")])
    assert code == 0
    [args] = captured_exports
    assert args.name == expected


def test_cli_explicit_name_wins(captured_exports, tmp_path):
    assert main(["export", "--model", "runs/best.keras", "--format", "bioimageio", "--output",
                 str(tmp_path), "--name", "mine", "--no-bioimageio-test"]) == 0
    assert captured_exports[0].name == "mine"


@pytest.mark.parametrize("stem, model_name, expected", [
    ("fusionnet_isbi2012", "fusionnet", "fusionnet_isbi2012"),
    ("latest", "unet", "unet"),
    ("best", "functional_3", "fusionnet"),  # Keras's automatic name says nothing either
    ("my model (v2)", "fusionnet", "my_model_v2"),
    ("_draft", "fusionnet", "draft"),
    ("best_of_run3", "fusionnet", "best_of_run3"),
])
def test_default_name_from_the_model(stem, model_name, expected):
    model = types.SimpleNamespace(name=model_name)
    path = Path("runs") / f"{stem}.keras"
    assert export_cli.default_name("bioimageio", model, path) == expected
    assert export_cli.default_name("litert", model, path) == "fusionnet"


def test_default_name_of_the_shipped_model():
    from fusionnet_tf.pretrained import PRETRAINED_FILE

    model = types.SimpleNamespace(name="fusionnet")
    assert export_cli.default_name("bioimageio", model, PRETRAINED_FILE) == "fusionnet_isbi2012"


@pytest.mark.parametrize("export_format", ["saved_model", "onnx", "litert", "tensorrt"])
def test_no_bioimageio_test_is_refused_for_other_formats(captured_exports, tmp_path, capsys,
                                                        export_format):
    code = main(["export", "--model", "m.keras", "--format", export_format,
                 "--output", str(tmp_path / "out"), "--no-bioimageio-test"])
    assert code == 2 and captured_exports == []
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("fusionnet export: error: --no-bioimageio-test applies to --format "
                    f"bioimageio only; received --format {export_format}")
