"""One CLI name for the tile side, ``--tile-size``; no abbreviations, no older aliases."""

import argparse

import pytest

from fusionnet_tf.cli import build_parser, main
from fusionnet_tf.cli.predict import add_tiling_arguments

COMMANDS = [["predict", "in.tif", "-o", "out.tif"],
            ["predict-volume", "in.zarr", "out.zarr"],
            ["export", "--model", "m.keras", "--format", "onnx", "--output", "out"]]


def test_predict_tile_flag():
    parser = argparse.ArgumentParser()
    add_tiling_arguments(parser)
    assert parser.parse_args(["--tile-size", "64"]).tile_size == 64
    assert parser.parse_args([]).tile_size == 512


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_tile_size(command):
    args = build_parser().parse_args(command + ["--tile-size", "96"])
    assert args.tile_size == 96


@pytest.mark.parametrize("command", COMMANDS[:2])
@pytest.mark.parametrize("old", [["--tile", "256"], ["--xla"]])
def test_the_older_names_are_refused(command, old, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + old)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {' '.join(old)}" in capsys.readouterr().err


@pytest.mark.parametrize("abbreviation", [["--tile-s", "64"], ["--over", "8"], ["--eng", "xla"],
                                          ["--norm", "global"]])
def test_options_are_never_abbreviated(abbreviation, capsys):
    for command in COMMANDS[:2]:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(command + abbreviation)
        assert exit_info.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--verb", "info"])  # the top-level parser too
