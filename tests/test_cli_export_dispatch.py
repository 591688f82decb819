"""``fusionnet export`` dispatches on an explicit table: no format falls through to another."""

import argparse

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
