"""Run a Keras model the fastest way this machine allows: time the variants once, cache the choice.

``Predictor(engine="auto")`` (the default) wraps a Keras model in an
``AutoNetwork``. On its first batch that network builds each eligible variant
of the model, runs it once (tracing, XLA compilation, oneDNN kernel
selection), times a few more calls of each, interleaved, and keeps the fastest,
the way cuDNN's benchmark mode does. The result of that batch is the chosen
variant's own result. The measurements are cached in a JSON file per model
architecture, batch shape and host, so later runs build only the chosen
variant.

A variant is an engine and a compute precision:

- engine ``"plain"``: BatchNorm folded, TensorFlow's oneDNN kernels, the
  weights variables;
- engine ``"frozen"``: plain with the weights as graph constants, so oneDNN
  keeps its blocked kernel layouts: base 64 ~13% faster per call, its first
  call 7-13 s slower (constant folding); base 16 0-5% faster, +0.2 s
  (``KerasFunction``). A candidate in float32 only (bfloat16 gained nothing);
- engine ``"xla"``: the same graph compiled with XLA (``jit_compile``): on a
  CPU faster for wide models, slower for narrow ones, and it compiles for a
  few seconds in every new process;
- precision ``"mixed_bfloat16"``: only with ``precision="auto"`` and only where
  the machine has bfloat16 matrix instructions (Intel AMX, ``amx_bf16``;
  AVX512-BF16 dot products, ``avx512_bf16``, e.g. AMD Zen 4/5; or a GPU).
  Elsewhere bfloat16 is emulated and slower than float32. With
  ``precision="float32"`` (the default) it is never a candidate.

TensorFlow shares oneDNN primitives between graphs by shape, so a frozen
network set up after the same convolutions ran with variable weights at
batch 1 reuses their unblocked primitives and gains nothing. The timing
therefore runs frozen first (plain timed after it pays a weight reorder per
call, a few percent, so the comparison leans slightly towards frozen). Only a
job known to be too short runs plain first and alone.

Timing costs about three calls of the slowest variant plus XLA's compilation
(measured for a 512 px slice at base 64 on 2 busy cores: 38-53 s, against 6.5 s for
the slice). So when the expected number of calls is known
(``Predictor.predict``, block-wise volumes), a job of fewer than
``MIN_TUNE_CALLS`` calls or under ``MIN_TUNE_SECONDS`` is not worth it: it
runs on the first variant it tried (plain for fewer calls, untimed; else
frozen, which is tried first) and nothing is cached. A cached choice
weighs each variant's set-up (XLA compilation, frozen's constant folding)
against the calls of the job, so a single slice runs plain even where XLA or
frozen is faster per call.

The cache file is ``$FUSIONNET_TF_CACHE_DIR/autotune.json``, else
``$XDG_CACHE_HOME/fusionnet-tf/autotune.json``, else
``~/.cache/fusionnet-tf/autotune.json``. Delete it to time again.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from fusionnet_tf.checks import check_choice
from fusionnet_tf.choices import ENGINES, INFERENCE_PRECISION_CHOICES

CACHE_ENV = "FUSIONNET_TF_CACHE_DIR"
CACHE_FILE = "autotune.json"
# a job of fewer calls, or that the first variant finishes faster, runs on it without timing
MIN_TUNE_CALLS = 8
MIN_TUNE_SECONDS = 5.0
# calls of at least SLOW_CALL_SECONDS are timed once per variant after the warm-up call, and
# a second time when the best two are within CLOSE_RATIO; faster calls FAST_ROUNDS times
SLOW_CALL_SECONDS = 0.5
CLOSE_RATIO = 1.1
FAST_ROUNDS = 5

LOGGER = logging.getLogger("fusionnet_tf.inference")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to run a Keras model.

    Attributes:
        engine: ``"plain"``, ``"frozen"`` or ``"xla"``.
        precision: a Keras dtype policy, ``"float32"``, ``"mixed_bfloat16"`` or
            ``"mixed_float16"``.
    """

    engine: str
    precision: str = "float32"

    @property
    def label(self):
        """Short name: ``"xla"``, ``"plain+mixed_bfloat16"``."""
        return self.engine if self.precision == "float32" else f"{self.engine}+{self.precision}"


def candidate_variants(engine, precision):
    """The variants ``engine`` and ``precision`` allow on this machine, first = the fallback.

    Args:
        engine: one of ``ENGINES``; ``"auto"`` allows plain, xla and, in
            float32, frozen.
        precision: one of ``INFERENCE_PRECISION_CHOICES``; ``"auto"`` allows
            float32 and, where ``has_bf16_matrix_units()``, mixed_bfloat16.

    Returns:
        list of ``Variant``, plain float32 first when allowed.

    Raises:
        ValueError: unknown ``engine`` or ``precision``.
    """
    check_choice("engine", engine, ENGINES)
    check_choice("precision", precision, INFERENCE_PRECISION_CHOICES)
    engines = ("plain", "frozen", "xla") if engine == "auto" else (engine,)
    if precision == "auto":
        precisions = ("float32", "mixed_bfloat16") if has_bf16_matrix_units() else ("float32",)
    else:
        precisions = (precision,)
    return [Variant(e, p) for p in precisions for e in engines
            if e != "frozen" or engine == "frozen" or p == "float32"]


def untimed_variant(engine, precision, weights_fit_constants=True):
    """The variant a model that the auto engine does not time (a 3D model) runs on.

    An explicit engine runs as asked (``candidate_variants(...)[0]``). The auto
    engine picks frozen when the choice allows it (float32, weights small
    enough to be graph constants): for the shipped base-8 3D SNEMI3D model,
    frozen runs at 0.70-0.77 of the measured conv peak against plain's
    0.62-0.64, about 20% faster per call (one 16 x 256 x 256 tile per call,
    each engine in its own process on 2 shared AVX-512 cores), for no
    extra set-up, with outputs within 2e-6 of plain's; XLA reached 0.08
    after 11-27 s of compilation (BENCHMARKS.md,
    ``benchmarks/profile_inference3d.py``).

    Args:
        engine: one of ``ENGINES``.
        precision: one of ``INFERENCE_PRECISION_CHOICES``.
        weights_fit_constants: bool. False when the weights exceed what a
            graph can hold as constants (then plain).

    Returns:
        ``Variant``.
    """
    variants = candidate_variants(engine, precision)
    if engine == "auto" and weights_fit_constants:
        frozen = [v for v in variants if v.engine == "frozen"]
        if frozen:
            return frozen[0]
    return variants[0]


# === The host ===

@functools.lru_cache(maxsize=1)
def cpu_info():
    """``(model name, frozenset of flags)`` of the first CPU in /proc/cpuinfo (empty elsewhere)."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == (platform.processor() or platform.machine()):
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name, flags


def _gpu_names():
    import tensorflow as tf

    return [device.name for device in tf.config.list_physical_devices("GPU")]


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def has_bf16_matrix_units():
    """True if bfloat16 matrix math runs natively here: AMX, AVX512-BF16 or a GPU.

    Only then is mixed_bfloat16 worth timing: on a 2-core AMD EPYC with
    AVX512-BF16 (no AMX) the BN-folded network ran 1.8-2.1x faster in
    mixed_bfloat16 than in float32 at base 16 to 64 (2026-12-02,
    BENCHMARKS.md); without these instructions bfloat16 is emulated.
    """
    flags = cpu_info()[1]
    return any(flag in flags for flag in BF16_CPU_FLAGS) or bool(_gpu_names())


def host_fingerprint():
    """JSON-able dict of what makes timings of this host differ from another's."""
    import keras
    import tensorflow as tf

    name, flags = cpu_info()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    return {
        "cpu": name, "flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
        "cores": cores, "machine": platform.machine(), "gpus": _gpu_names(),
        "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads(),
                    os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("OMP_NUM_THREADS")],
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }


def model_fingerprint(model):
    """Hex digest of a Keras model's architecture: layer types, configs and weight shapes.

    Layer names and weight values are left out: they do not change the speed.
    """
    parts = [type(model).__name__, str(model.input_shape)]
    for layer in model.layers:
        config = dict(layer.get_config())
        config.pop("name", None)
        parts.append([type(layer).__name__, config, [list(w.shape) for w in layer.weights]])
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# === The cache ===

def cache_path():
    """Path of the autotune cache file (see the module docstring); it may not exist yet."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "fusionnet-tf")
    return Path(folder) / CACHE_FILE


def load_cache(path=None):
    """The cache as a dict ``{key: entry}``; empty if the file is missing or unreadable."""
    path = Path(path) if path else cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store_entry(key, entry, path=None):
    """Add ``entry`` under ``key`` to the cache file (atomic rename); a failure only warns."""
    from fusionnet_tf.io.outputs import atomic_path

    path = Path(path) if path else cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = load_cache(path)
        data[key] = entry
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:
        LOGGER.warning("fusionnet: could not write the autotune cache %s (%s); the choice "
                       "will be timed again next time", path, exc)


def cache_key(model_id, batch_shape, variants):
    """Key of one choice: model fingerprint, (B, T, T, 1) batch shape, candidates and host."""
    text = json.dumps({"model": model_id, "batch": list(batch_shape),
                       "variants": [v.label for v in variants], "host": host_fingerprint()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# === Timing and choosing ===

def time_call(network, batch):
    """``(seconds, output)`` of one call ``network(batch)``.

    The default ``timer`` of ``AutoNetwork``: a test passes its own to inject
    timings (``network`` is a ``KerasFunction`` with ``variant``,
    ``jit_compile`` and ``precision`` attributes).
    """
    start = time.perf_counter()
    output = network(batch)
    return time.perf_counter() - start, output


def choose(timings, variants, calls=None):
    """The variant with the least expected cost.

    Args:
        timings: ``{label: {"batch_s": float, "setup_s": float}}``.
        variants: the candidate ``Variant`` list, in order of preference on ties.
        calls: int or None. Calls the job will make. None: choose by time
            per call alone (the set-up is paid or the job is long).

    Returns:
        ``Variant``.
    """
    def cost(variant):
        timing = timings[variant.label]
        if calls is None:
            return timing["batch_s"]
        return timing["setup_s"] + calls * timing["batch_s"]

    return min(variants, key=cost)


def describe_choice(chosen, timings, how):
    """One line: what was chosen and the time per call of each variant."""
    others = ", ".join(f"{label} {t['batch_s']:.3g} s" for label, t in timings.items()
                       if label != chosen.label)
    return (f"auto engine chose {chosen.label} ({timings[chosen.label]['batch_s']:.3g} s/batch"
            f"{' vs ' + others if others else ''}; {how})")


class AutoNetwork:
    """A callable that runs the fastest of several variants of a Keras model.

    Args:
        model: ``keras.Model``.
        variants: list of two or more ``Variant``; the first is the fallback
            for short jobs, built at once (so a model it cannot run fails here).
        build: callable ``Variant -> network``; a network maps a (B, T, T, 1)
            float32 NumPy batch to a NumPy output. A variant whose build
            raises ValueError (e.g. bfloat16 for a nested model) is skipped.
        report: callable taking a one-line str, or None. Called once, when the
            choice is made. The line is also logged (logger
            ``fusionnet_tf.inference``, level INFO).
        describe: str naming the model and batch in the report line.
        timer: callable ``(network, batch) -> (seconds, output)`` that times
            one call of a variant; defaults to ``time_call``, the wall clock.

    Attributes:
        variant: the chosen ``Variant`` (None before the first batch).
        network: the chosen network (None before the first batch).
        expected_calls: int or None; set it before the first call when the
            job size is known (``Predictor`` does).
        timings: the timings the choice was made from (``{}`` if none).
        timer: the ``timer`` argument (may be replaced before the first batch).
    """

    def __init__(self, model, variants, build, report=None, describe="", timer=time_call):
        if len(variants) < 2:
            raise ValueError(f"AutoNetwork needs two or more variants; received {variants}")
        self.model, self.variants, self.build = model, list(variants), build
        self.report, self.describe, self.timer = report, describe, timer
        self.variant = self.network = None
        self.expected_calls = None
        self.timings = {}
        self._model_id = None
        start = time.perf_counter()
        self._built = {self.variants[0]: build(self.variants[0])}
        self._build_seconds = {self.variants[0]: time.perf_counter() - start}

    def __call__(self, batch):
        if self.network is None:
            return self.resolve(batch, self.expected_calls)
        return self.network(batch)

    def use(self, variant):
        """Run ``variant`` from now on, without timing.

        Any variant, also one that is not a candidate here: a resumed volume
        keeps the variant it was started with, even on another machine.

        Raises:
            ValueError: an unknown engine or precision.
        """
        candidate_variants(variant.engine, variant.precision)  # validates both
        if variant != self.variant:
            network = self._built.get(variant) or self.build(variant)
            self.variant, self.network, self._built = variant, network, {}
        return variant

    def resolve(self, batch, calls=None):
        """Choose the variant for batches shaped like ``batch``; return ``batch``'s output.

        From the cache if it holds the choice for this model, batch shape and
        host; else by timing every variant on ``batch`` (then cached), unless
        the first variant alone would finish the ``calls`` of the job in under
        ``MIN_TUNE_SECONDS``.

        Args:
            batch: (B, T, T, 1) float32 NumPy array.
            calls: int or None. Calls of this batch shape the job will make.

        Returns:
            The chosen network's output for ``batch``.
        """
        if self._model_id is None:
            self._model_id = model_fingerprint(self.model)
        key = cache_key(self._model_id, batch.shape, self.variants)
        entry = load_cache().get(key) or {}
        timings, skipped = entry.get("timings", {}), set(entry.get("skipped", ()))
        if timings and all(v.label in timings or v.label in skipped for v in self.variants):
            self.timings = timings
            self.variants = [v for v in self.variants if v.label in timings]
            self.use(choose(self.timings, self.variants, calls))
            self._say(describe_choice(self.variant, self.timings, f"cached in {cache_path()}"))
            return self.network(batch)
        return self._tune(batch, calls, key)

    def _tune(self, batch, calls, key):
        start = time.perf_counter()
        networks, first, outputs, skipped = {}, {}, {}, []
        fallback = self.variants[0]
        for variant in self._timing_order(calls):
            built = time.perf_counter()
            try:
                networks[variant] = self._built.get(variant) or self.build(variant)
                seconds, outputs[variant] = self.timer(networks[variant], batch)
            except Exception as exc:  # noqa: BLE001 - a variant that cannot run is skipped
                if variant == fallback:
                    raise  # plain float32 failing is a real error, not a slow variant
                level = logging.INFO if isinstance(exc, ValueError) else logging.WARNING
                LOGGER.log(level, "fusionnet: auto engine skips %s: %s", variant.label, exc)
                self.variants.remove(variant)
                networks.pop(variant, None)
                skipped.append(variant.label)
                continue
            first[variant] = max(seconds, time.perf_counter() - built
                                 + self._build_seconds.get(variant, 0.0))  # build + first call
            if len(first) == 1 and _too_short(calls, seconds):
                self.variant, self.network, self._built = variant, networks[variant], {}
                self._say(f"auto engine runs {variant.label} (a job of {calls} call(s), "
                          f"~{seconds * calls:.2g} s, is too short to pay for timing the others)")
                return outputs[variant]
        samples = {variant: [] for variant in self.variants}
        slow = min(first.values()) >= SLOW_CALL_SECONDS
        for _ in range(2 if slow else FAST_ROUNDS):
            for variant in self.variants:  # interleaved, so load from others hits all alike
                seconds, outputs[variant] = self.timer(networks[variant], batch)
                samples[variant].append(seconds)
            best = sorted(min(times) for times in samples.values())
            if slow and (len(best) < 2 or best[1] > CLOSE_RATIO * best[0]):
                break  # a clear winner after one timed round
        self.timings = {v.label: {"batch_s": min(samples[v]),
                                  "setup_s": max(0.0, first[v] - min(samples[v]))}
                        for v in self.variants}
        self.variant = choose(self.timings, self.variants)
        self.network, self._built = networks[self.variant], {}
        store_entry(key, {"timings": self.timings, "choice": self.variant.label,
                          "skipped": skipped,
                          "describe": self.describe, "batch": list(batch.shape),
                          "host": host_fingerprint(),
                          "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self._say(describe_choice(self.variant, self.timings,
                                  f"timed in {time.perf_counter() - start:.1f} s, "
                                  f"cached in {cache_path()}"))
        return outputs[self.variant]

    def _timing_order(self, calls):
        """The variants in the order they are first run: frozen ones first (see the module
        docstring), unless the job is known to be too short, when the fallback runs alone."""
        if calls is not None and calls < MIN_TUNE_CALLS:
            return list(self.variants)
        return sorted(self.variants, key=lambda variant: variant.engine != "frozen")

    def _say(self, text):
        line = f"fusionnet: {text}{' for ' + self.describe if self.describe else ''}"
        LOGGER.info(line)
        if self.report is not None:
            self.report(line)


def _too_short(calls, seconds):
    """True if a job of ``calls`` calls of ``seconds`` each is not worth timing variants for."""
    return calls is not None and (calls < MIN_TUNE_CALLS or calls * seconds < MIN_TUNE_SECONDS)


def print_to_stderr(line):
    """The default ``report`` of the command line: ``line`` on stderr (above a tqdm bar)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


__all__ = ["AutoNetwork", "Variant", "candidate_variants", "has_bf16_matrix_units",
           "cache_path", "time_call", "choose", "MIN_TUNE_CALLS", "MIN_TUNE_SECONDS"]
