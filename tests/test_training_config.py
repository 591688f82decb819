"""Training config: loading, overrides, type checks and pre-training checks."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import yaml

from fusionnet_tf.training import config as config_lib
from fusionnet_tf.training.config import (
    TrainConfig,
    apply_overrides,
    check_config,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_slices,
)


@pytest.fixture
def stack_files(tmp_path):
    """A tiny 4-slice image/label pair on disk; returns (images, labels) paths."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images.tif"
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(images, rng.integers(0, 255, (4, 32, 32), dtype=np.uint8))
    tifffile.imwrite(labels, (rng.random((4, 32, 32)) > 0.3).astype(np.uint8) * 255)
    return images, labels


def valid_mapping(images, labels, tmp_path):
    return {
        "model": {"base_filters": 4, "depth": 2},
        "data": {"train_images": str(images), "train_labels": str(labels),
                 "train_slices": "0-2", "val_slices": [3], "tile_size": 32},
        "output_dir": str(tmp_path / "run"),
    }


def test_defaults_and_nested_sections():
    config = config_from_dict({"model": {"depth": 3}, "epochs": 7})
    assert isinstance(config, TrainConfig)
    assert config.model.depth == 3 and config.model.base_filters == 16
    assert config.epochs == 7 and config.optimizer.name == "adam"


def test_yaml_and_json_files_load_the_same(tmp_path):
    mapping = {"epochs": 3, "optimizer": {"learning_rate": 0.01}, "augment": {"noise": 0.0}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(mapping))
    (tmp_path / "c.json").write_text(json.dumps(mapping))
    from_yaml = load_config(tmp_path / "c.yaml")
    from_json = load_config(tmp_path / "c.json")
    assert from_yaml == from_json
    assert from_yaml.optimizer.learning_rate == 0.01 and from_yaml.augment == {"noise": 0.0}


def test_overrides_parse_yaml_values_and_coerce_numbers():
    config = load_config(None, ["epochs=5", "optimizer.learning_rate=1e-4",
                                "jit_compile=true", "data.train_slices=0-9",
                                "data.val_slices=[10, 11]", "augment.elastic=false",
                                "model.dropout=0"])
    assert config.epochs == 5
    # YAML 1.1 reads "1e-4" as a string; float fields accept it
    assert config.optimizer.learning_rate == pytest.approx(1e-4)
    assert config.jit_compile is True
    assert config.data.train_slices == "0-9" and config.data.val_slices == [10, 11]
    assert config.augment == {"elastic": False}
    assert config.model.dropout == 0.0 and isinstance(config.model.dropout, float)


def test_override_does_not_mutate_the_input():
    mapping = {"model": {"depth": 2}}
    apply_overrides(mapping, ["model.depth=3"])
    assert mapping == {"model": {"depth": 2}}


@pytest.mark.parametrize("overrides, message", [
    (["epoch=3"], "unknown config key 'epoch'"),
    (["model.filters=8"], "unknown config key 'model.filters'"),
    (["epochs=three"], "config key 'epochs' must be int; received 'three'"),
    (["epochs=2.5"], "config key 'epochs' must be int; received 2.5"),
    (["jit_compile=1"], "config key 'jit_compile' must be bool; received 1"),
    (["model=3"], "config key 'model' must be a mapping"),
    (["optimizer.name=sgd"], "config key 'optimizer.name' must be one of"),
    (["precision=float16"], "config key 'precision' must be one of"),
    (["epochs=0"], "config key 'epochs' must be >= 1; received 0"),
    (["epochs"], "--set expects KEY=VALUE; received 'epochs'"),
])
def test_bad_keys_and_types_raise_one_line_value_errors(overrides, message):
    with pytest.raises(ValueError) as info:
        load_config(None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_file_that_is_not_a_mapping(tmp_path):
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "c.yaml")


def test_round_trip_through_dict():
    config = load_config(None, ["epochs=4", "data.val_slices=3-4"])
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("spec, expected", [
    (None, [0, 1, 2, 3, 4]),
    ("0-2", [0, 1, 2]),
    ("4,0-1", [0, 1, 4]),
    ([3, 1], [1, 3]),
    (2, [2]),
])
def test_parse_slices(spec, expected):
    assert parse_slices(spec, 5) == expected


@pytest.mark.parametrize("spec, message", [
    ("0-9", r"outside the stack's 5 slices"),
    ("3-1", "decreasing range"),
    ("a-b", "must look like"),
    ([], "selects no slices"),
])
def test_parse_slices_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_slices(spec, 5, key="data.train_slices")


def test_check_config_accepts_a_valid_config(stack_files, tmp_path):
    check_config(config_from_dict(valid_mapping(*stack_files, tmp_path)))


@pytest.mark.parametrize("change, error, message", [
    ({"data": {"tile_size": 34}}, ValueError,
     "config key 'data.tile_size' must be a multiple of 2**model.depth = 4"),
    ({"data": {"val_tile_size": 30}}, ValueError, "'data.val_tile_size' must be a multiple"),
    ({"data": {"train_images": "missing.tif"}}, FileNotFoundError,
     "config key 'data.train_images': no such file or folder: missing.tif"),
    ({"data": {"val_images": "missing.h5:/raw", "val_labels": "x.h5:/l"}}, FileNotFoundError,
     "'data.val_images': no such file or folder: missing.h5:/raw"),
    ({"data": {"train_labels": ""}}, ValueError, "config key 'data.train_labels' is required"),
    ({"data": {"val_slices": None}, "isbi_eval_every": 2}, ValueError,
     "'isbi_eval_every'=2 needs validation data"),
    ({"augment": {"swirl": 1.0}}, ValueError, "config key 'augment': unknown augmentation"),
])
def test_check_config_errors(stack_files, tmp_path, change, error, message):
    mapping = valid_mapping(*stack_files, tmp_path)
    for key, value in change.items():
        if isinstance(value, dict):
            mapping[key] = {**mapping.get(key, {}), **value}
        else:
            mapping[key] = value
    if change.get("data", {}).get("val_slices", 0) is None:
        mapping["checkpoint_monitor"] = "loss"
    with pytest.raises(error) as info:
        check_config(config_from_dict(mapping))
    assert message in str(info.value)


def test_hdf5_spec_path_part(tmp_path):
    assert config_lib._stack_path("a/b.h5:/raw").as_posix() == "a/b.h5"
    assert config_lib._stack_path("a/b.tif").as_posix() == "a/b.tif"


def test_shipped_configs_parse():
    for name in ("isbi2012.yaml", "smoke.yaml"):
        config = load_config(f"training/configs/{name}")
        config_lib.check_values(config)
        assert config.data.tile_size % 2**config.model.depth == 0


def run_cli(monkeypatch, argv):
    """Run ``fusionnet`` in-process with only the train subcommand registered."""
    import fusionnet_tf.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", {"train": "fusionnet_tf.cli.train"})
    return cli.main(argv)


@pytest.mark.parametrize("overrides, message", [
    (["--set", "epochz=1"], "unknown config key 'epochz'"),
    (["--set", "epochs=x"], "config key 'epochs' must be int"),
    (["--set", "data.tile_size=34"], "must be a multiple of 2**model.depth"),
    (["--set", "data.train_images=nowhere.tif"], "'data.train_images': no such file"),
])
def test_cli_bad_config_exits_2_with_one_line(stack_files, tmp_path, monkeypatch, capsys,
                                              overrides, message):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(valid_mapping(*stack_files, tmp_path)))
    monkeypatch.chdir(tmp_path)
    code = run_cli(monkeypatch, ["train", "--config", str(config_path), *overrides])
    assert code == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("fusionnet train: error: ")
    assert message in error_lines[0]
    assert not (tmp_path / "run").exists()  # nothing started


def test_cli_check_prints_resolved_config(stack_files, tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(valid_mapping(*stack_files, tmp_path)))
    code = run_cli(monkeypatch, ["train", "--config", str(config_path), "--set", "epochs=3",
                                 "--check"])
    assert code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["epochs"] == 3 and resolved["model"]["base_filters"] == 4
    assert resolved["optimizer"]["name"] == "adam"
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_train_help_is_fast_to_import():
    """The CLI module must not import TensorFlow at import time."""
    code = ("import sys, fusionnet_tf.cli.train; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
    assert process.stdout.split() == ["False", "False"]
