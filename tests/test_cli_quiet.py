"""A normal ``fusionnet`` run prints no TensorFlow start-up lines; ``--verbose`` does."""

import os
import subprocess
import sys

import pytest

from fusionnet_tf.cli.quiet import filtered_stderr, is_startup_noise

PREINIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = ("I0000 00:00:1796185006.102167    5194 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results")
CUINIT = ("E0000 00:00:1796185011.589998    5194 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
REAL_ERROR = ("E0000 00:00:1796185011.589998    5194 op_kernel.cc:1857] OP_REQUIRES failed at "
              "conv_ops.cc:1234 : RESOURCE_EXHAUSTED: OOM when allocating tensor")
WARNING_AFTER_INIT = "W1202 04:16:10.123456    5194 loader.cc:12] some warning"


@pytest.mark.parametrize("line", [PREINIT, ONEDNN, CUINIT, WARNING_AFTER_INIT])
def test_startup_lines_are_noise(line):
    assert is_startup_noise(line + "\n")


@pytest.mark.parametrize("line", [
    REAL_ERROR,
    "F0000 00:00:1.5    7 logging.cc:1] Check failed: fatal",
    "Traceback (most recent call last):",
    "UserWarning: something the user should read",
    " 50%|#####     | 1/2 [00:01<00:01]",
])
def test_errors_and_other_output_are_kept(line):
    assert not is_startup_noise(line)


def test_filtered_stderr_replays_only_what_matters(capfd):
    with filtered_stderr():
        os.write(2, f"{PREINIT}\n{ONEDNN}\n{CUINIT}\n{REAL_ERROR}\nplain text\n".encode())
    err = capfd.readouterr().err
    assert err.splitlines() == [REAL_ERROR, "plain text"]


def _run_cli(*args):
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must be quiet without the user's help
    command = [sys.executable, "-m", "fusionnet_tf", *args, "info", "--architecture", "unet",
               "--base-filters", "4", "--depth", "2"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Total params" in result.stdout
    return result.stderr


@pytest.mark.e2e
@pytest.mark.large
def test_cli_is_quiet_unless_verbose():
    quiet = _run_cli()
    noise = [line for line in quiet.splitlines() if is_startup_noise(line)
             or "tensorflow" in line.lower() or "cuinit" in line.lower()]
    assert noise == [], quiet
    assert quiet.strip() == ""
    verbose = _run_cli("--verbose")
    assert any(is_startup_noise(line) for line in verbose.splitlines()), verbose
