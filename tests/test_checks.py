"""``fusionnet_tf.checks.check_int``: the one integer validator."""

import numpy as np
import pytest

from fusionnet_tf.checks import check_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_accepts_python_and_numpy_integers(value):
    assert check_int("n", value) == int(value)
    assert type(check_int("n", value)) is int


@pytest.mark.parametrize("value, minimum", [(0, 1), (-1, 0), (True, 0), (2.0, 1), ("3", 1),
                                            (None, 0), (1, 2)])
def test_rejects_with_name_value_and_type(value, minimum):
    with pytest.raises(ValueError, match=rf"`n` must be an integer >= {minimum}; received n="):
        check_int("n", value, minimum)


def test_minimum_is_inclusive():
    assert check_int("n", 0, 0) == 0
    assert check_int("n", 2, 2) == 2


def test_callers_share_the_message():
    from fusionnet_tf.inference.tiling import check_tile_args
    from fusionnet_tf.models.validation import check_positive_int

    for call in (lambda: check_tile_args(2.5, 0), lambda: check_positive_int("tile", 2.5)):
        with pytest.raises(ValueError, match=r"`tile` must be an integer >= 1; received tile=2.5 "
                                             r"\(of type float\)"):
            call()


# === check_choice ===

def test_choice_returns_the_value():
    from fusionnet_tf.checks import check_choice

    assert check_choice("blending", "cosine", ("gaussian", "cosine")) == "cosine"
    assert check_choice("tta", 8, {1: (0,), 8: (0, 1)}) == 8  # a dict: its keys
    assert check_choice("tta", np.int64(4), (1, 4, 8)) == 4


@pytest.mark.parametrize("name, value, choices, where, message", [
    ("blending", "box", ("gaussian", "cosine"), "",
     "`blending` must be one of gaussian, cosine; received blending='box'"),
    ("tta", 3, (1, 2, 4, 8, 16), "for a 3D model",
     "`tta` must be one of 1, 2, 4, 8, 16 for a 3D model; received tta=3"),
    ("tta", "8", (1, 4, 8), "", "`tta` must be one of 1, 4, 8; received tta='8' (of type str)"),
    ("tta", True, (1, 4, 8), "", "`tta` must be one of 1, 4, 8; received tta=True (of type bool)"),
    ("--format", "tflite", {"onnx": 1, "litert": 2}, "",
     "--format must be one of onnx, litert; received 'tflite'"),
    ("config key 'loss.name'", "focal", ["bce", "dice"], "",
     "config key 'loss.name' must be one of bce, dice; received 'focal'"),
    ("mode", ["2d"], {"2d": 0}, "", "`mode` must be one of 2d; received mode=['2d'] (of type list)"),
])
def test_choice_message_is_one_line_naming_argument_choices_and_value(name, value, choices, where,
                                                                      message):
    from fusionnet_tf.checks import check_choice

    with pytest.raises(ValueError) as info:
        check_choice(name, value, choices, where)
    assert str(info.value) == message


# === check_range ===

@pytest.mark.parametrize("value, low, high, opens", [
    (0, 0, 1, {}), (1, 0, 1, {}), (0.5, 0, 1, dict(open_low=True, open_high=True)),
    (np.float32(0.25), 0, 1, {}), (7, 1, None, {}), (-3.0, None, 0, {}), (1e9, None, None, {}),
])
def test_range_accepts_numbers_inside(value, low, high, opens):
    from fusionnet_tf.checks import check_range

    assert check_range("x", value, low, high, **opens) is value


@pytest.mark.parametrize("value, low, high, opens, message", [
    (0, 0, 1, dict(open_low=True), "`x` must be a number in (0, 1]; received x=0"),
    (1, 0, 1, dict(open_high=True), "`x` must be a number in [0, 1); received x=1"),
    (1.5, 0, 1, {}, "`x` must be a number in [0, 1]; received x=1.5"),
    (-0.1, 0, None, {}, "`x` must be a number in [0, inf); received x=-0.1"),
    (2, None, 1, {}, "`x` must be a number in (-inf, 1]; received x=2"),
    (float("nan"), 0, 1, {}, "`x` must be a number in [0, 1]; received x=nan"),
    ("0.5", 0, 1, {}, "`x` must be a number in [0, 1]; received x='0.5' (of type str)"),
    (True, 0, 1, {}, "`x` must be a number in [0, 1]; received x=True (of type bool)"),
    (None, 0, 1, {}, "`x` must be a number in [0, 1]; received x=None (of type NoneType)"),
])
def test_range_refuses_with_the_interval_and_value(value, low, high, opens, message):
    from fusionnet_tf.checks import check_range

    with pytest.raises(ValueError) as info:
        check_range("x", value, low, high, **opens)
    assert str(info.value) == message


def test_every_choice_and_range_message_comes_from_checks():
    """No module spells out "must be one of" by hand or keeps its own choice check."""
    import pathlib
    import re

    import fusionnet_tf

    root = pathlib.Path(fusionnet_tf.__file__).parent
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if path.name != "checks.py"
                 and re.search(r"must be one of|def _check_(choice|range)\b", path.read_text())]
    assert offenders == []


def test_library_messages_name_argument_choices_and_value():
    from fusionnet_tf.segmentation import SegmentParams
    from fusionnet_tf.training.config import TrainConfig, check_values

    with pytest.raises(ValueError, match=r"^`merge_statistic` must be one of mean, quantile; "
                                         r"received merge_statistic='max'$"):
        SegmentParams(merge_statistic="max")
    with pytest.raises(ValueError, match=r"^`z_link_overlap` must be a number in \(0, 1\]; "
                                         r"received z_link_overlap=0$"):
        SegmentParams(z_link_overlap=0)
    config = TrainConfig()
    config.model.dropout = 1.0
    with pytest.raises(ValueError, match=r"^config key 'model.dropout' must be a number in "
                                         r"\[0, 1\); received 1.0$"):
        check_values(config)
