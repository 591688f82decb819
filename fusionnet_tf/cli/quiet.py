"""Keep TensorFlow's start-up log lines off a normal ``fusionnet`` run.

Importing TensorFlow 2.21 and probing for CUDA print lines such as::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796185006.102167    5194 port.cc:153] oneDNN custom operations are on. ...
    E0000 00:00:1796185011.589998    5194 cuda_platform.cc:52] failed call to cuInit: ... (303)

``TF_CPP_MIN_LOG_LEVEL`` cannot hide them: Abseil writes every message
logged before ``absl::InitializeLog()`` to stderr whatever the threshold
(abseil/abseil-cpp#1718, tensorflow/tensorflow#100442), and the cuInit line
of a CPU-only machine is an ERROR. So the ``fusionnet`` command imports
TensorFlow (and lets it probe its devices) with file descriptor 2 sent to a
temporary file, then replays every captured line except the log lines of
severity INFO/WARNING and the CUDA probing errors of a machine without a GPU
(:func:`is_startup_noise`). A real error (any other ERROR/FATAL line, a
Python warning, a traceback) is still printed. After start-up,
``TF_CPP_MIN_LOG_LEVEL=2`` keeps TensorFlow's C++ INFO and WARNING lines out,
and the Python ``tensorflow``/``absl`` loggers show errors only.

``fusionnet --verbose`` turns all of this off.
"""

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile

# "I0000 00:00:1796185006.102167    5194 port.cc:153] ..." (Abseil / TensorFlow C++ log line)
_LOG_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+\] (?P<text>.*)")
_ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called"
# ERROR lines that only say "this machine has no (usable) CUDA GPU"
_CUDA_PROBING = re.compile(r"failed call to cuInit|Unable to register cu\w+ factory|"
                           r"could not retrieve CUDA device count")
_INSTALLED_ATTRIBUTE = "_fusionnet_quiet_tensorflow"


def is_startup_noise(line):
    """True for a TensorFlow start-up line a normal run should not print.

    Args:
        line: str, one line of stderr output (with or without its newline).

    Returns:
        bool: the Abseil pre-initialisation notice, a C++ log line of
        severity I or W, or an E line about CUDA probing; False for anything
        else (other errors, Python output).

    Example:
    >>> is_startup_noise("I0000 00:00:1.5    7 port.cc:153] oneDNN custom operations are on.")
    True
    """
    if line.startswith(_ABSL_PREINIT):
        return True
    match = _LOG_LINE.match(line)
    if match is None:
        return False
    return match["severity"] in "IW" or (match["severity"] == "E"
                                         and _CUDA_PROBING.search(match["text"]) is not None)


@contextlib.contextmanager
def filtered_stderr(drop=is_startup_noise):
    """Capture file descriptor 2 (C++ and Python output) for a block; replay what ``drop`` keeps.

    Args:
        drop: callable ``line -> bool``; True drops the line.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not drop(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader (and its device probing) inside :func:`filtered_stderr`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader  # hand the module back
        with filtered_stderr():
            self.loader.exec_module(module)
            module.config.list_physical_devices()  # the CUDA probe logs here, not at import


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loader of the first ``import tensorflow``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import only; later ones find sys.modules
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow():
    """Hide TensorFlow's start-up lines for the rest of this process (see the module docstring).

    Call before anything imports TensorFlow; does nothing when TensorFlow is
    already imported. Leaves a ``TF_CPP_MIN_LOG_LEVEL`` set by the user alone.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" in sys.modules or any(getattr(f, _INSTALLED_ATTRIBUTE, False)
                                          for f in sys.meta_path):
        return
    finder = _QuietTensorFlowFinder()
    setattr(finder, _INSTALLED_ATTRIBUTE, True)
    sys.meta_path.insert(0, finder)
