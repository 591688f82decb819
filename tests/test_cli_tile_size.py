"""One CLI name for the tile side: ``--tile-size`` everywhere; ``--tile`` still works."""

import argparse

import pytest

from fusionnet_tf.cli import build_parser
from fusionnet_tf.cli.predict import add_tiling_arguments


@pytest.mark.parametrize("flag", ["--tile-size", "--tile"])
def test_predict_tile_flag_and_its_older_alias(flag):
    parser = argparse.ArgumentParser()
    add_tiling_arguments(parser)
    assert parser.parse_args([flag, "64"]).tile_size == 64
    assert parser.parse_args([]).tile_size == 512


@pytest.mark.parametrize("command", [["predict", "in.tif", "-o", "out.tif"],
                                     ["predict-volume", "in.zarr", "out.zarr"],
                                     ["export", "--model", "m.keras", "--format", "onnx",
                                      "--output", "out"]])
def test_every_command_takes_tile_size(command):
    args = build_parser().parse_args(command + ["--tile-size", "96"])
    assert args.tile_size == 96
