"""The prediction engine: TensorFlow in a worker process of its own, never in the viewer's.

TensorFlow bundles LLVM, and so does Mesa's OpenGL driver (software
rendering, Intel/AMD graphics); the two clash in one process (a crash when
TensorFlow loads after napari has drawn, in llvmpipe, in XLA, at exit). So
the "Predict membranes" widget never imports TensorFlow: it hands the
normalized images to one worker process, started with the ``spawn`` method
(a fresh interpreter, not a fork of the viewer) on the first run and kept
for the next runs (the model and its compiled engine stay loaded). The
worker reports ``(done, total)`` tiles after each group of tiles, checks
for cancellation between groups, and is stopped when the last Predict
widget closes and at interpreter exit.

This module imports only the standard library and NumPy (the worker
imports it first, before TensorFlow), and nothing of napari or Qt.
"""

import atexit
import multiprocessing
import os
import threading
import time
import traceback
from pathlib import Path

# Seconds the worker has to acknowledge a cancel (it checks between tile groups) before it
# is terminated; the next run then starts a new one.
CANCEL_GRACE = 3.0
# Seconds ``shutdown`` waits for the worker to finish before terminating it.
SHUTDOWN_GRACE = 5.0
_POLL = 0.05  # seconds between checks of the reply pipe


class PredictionFailed:
    """A run refused or failed for the user's input: a corrupt model, a tile size it refuses.

    Attributes:
        message: str, one line for a notification.
    """

    def __init__(self, message):
        self.message = message

    def __repr__(self):
        return f"PredictionFailed({self.message!r})"


class PredictionCancelled:
    """What a run returns when it was cancelled (no result, no layer)."""

    def __repr__(self):
        return "PredictionCancelled()"


class PredictionResult:
    """A finished run.

    Attributes:
        data: float32 array: a membrane probability of the images' shape
            ((H, W) or (N, H, W)) for a 2D model, (C, Z, Y, X) affinities for
            a 3D affinity model.
        offsets: None (2D model), or the C ``(dz, dy, dx)`` offsets of the
            affinity channels.
    """

    def __init__(self, data, offsets=None):
        self.data = data
        self.offsets = None if offsets is None else [tuple(int(v) for v in o) for o in offsets]

    def __repr__(self):
        return f"PredictionResult({getattr(self.data, 'shape', None)}, offsets={self.offsets})"


# --------------------------------------------------------------------------- #
# The worker process
# --------------------------------------------------------------------------- #


def _model_key(model):
    """Cache key of a model spec (None = the shipped model, else a path): path and mtime."""
    if model is None:
        return None
    path = Path(model)
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


class _LoadedModels:
    """The last model and Predictor of the worker, reused while the run asks for the same."""

    def __init__(self):
        self.model_key = self.network = self.predictor_key = self.predictor = None

    def predictor_for(self, model, options):
        """A ``Predictor`` of ``model`` (None = shipped) with ``options``, loaded once.

        ``options`` are ``predictor_options``'s input: ``PredictOptions.to_dict()``.
        """
        from fusionnet_tf.inference import Predictor, load_model
        from fusionnet_tf.inference.predictor import model_spatial_dims
        from fusionnet_tf.pretrained import load_pretrained

        model_key = _model_key(model)
        if model_key != self.model_key or self.network is None:
            self.network = self.predictor = None
            self.network = load_pretrained() if model is None else load_model(model)
            self.model_key = model_key
        predictor_key = (model_key, tuple(sorted(options.items())))
        if predictor_key != self.predictor_key or self.predictor is None:
            self.predictor = None
            arguments = predictor_options(options, model_spatial_dims(self.network), model)
            self.predictor = Predictor(self.network, **arguments)
            self.predictor_key = predictor_key
        return self.predictor


def predictor_options(options, spatial_dims, model):
    """``Predictor`` arguments from the widget's ``options`` for a 2D or 3D model.

    Args:
        options: dict of ``PredictOptions`` fields (``to_dict``): an int
            ``tile_shape`` and ``overlap`` (in-plane pixels), ``tile_z``
            (sections per tile of a 3D model), tta, precision, engine, ...
        spatial_dims: 2 or 3 (``model_spatial_dims`` of the loaded model).
        model: the model path (its ``MODEL.offsets.json`` gives a 3D
            model's offsets), or None (the shipped 2D model).

    Returns:
        dict of ``Predictor`` keyword arguments: ``options``, and for a 3D
        model its offsets (its tiles are then ``(tile_z, tile, tile)``, the z
        overlap a quarter of ``tile_z``: ``PredictOptions.tile``).

    Raises:
        ValueError: a 3D model whose offsets are unknown, naming its file.
    """
    arguments = dict(options)
    if spatial_dims != 3:
        return arguments
    from fusionnet_tf.inference.predictor import model_offsets_path, read_model_offsets

    offsets = read_model_offsets(model) if model is not None else None
    if offsets is None:
        where = model_offsets_path(model) if model is not None else "MODEL.offsets.json"
        raise ValueError(f"the offsets of the 3D model {model} are unknown: write {where} "
                         "beside the model ({\"offsets\": [[dz, dy, dx], ...]})")
    arguments.update(offsets=[tuple(o) for o in offsets])
    return arguments


def check_model_input(predictor, images):
    """Refuse a single 2D image for a 3D model before any tile runs (one line).

    Raises:
        ValueError: ``images`` is (H, W) or (1, H, W) and the model is 3D.
    """
    if predictor.spatial_dims == 3:
        from fusionnet_tf.inference.predictor import check_volume_for_3d_model

        check_volume_for_3d_model(images.shape, "the image layer")


def _run_job(conn, job, cancelled, loaded, model, images, options):
    """Run one prediction in the worker, sending ``(kind, job, payload)`` replies on ``conn``."""
    try:
        predictor = loaded.predictor_for(model, options)
        check_model_input(predictor, images)
        steps = predictor.predict_steps(images)
        while True:
            if cancelled.value >= job:
                steps.close()
                conn.send(("cancelled", job, None))
                return
            try:
                counts = next(steps)
            except StopIteration as stop:
                conn.send(("result", job, PredictionResult(stop.value, predictor.offsets)))
                return
            conn.send(("progress", job, tuple(int(c) for c in counts)))
    except (ValueError, OSError, ImportError) as exc:  # the user's input: one line
        conn.send(("failed", job, str(exc)))
    except Exception:  # a bug: the whole traceback
        conn.send(("error", job, traceback.format_exc()))


def serve(conn, cancelled):
    """Main function of the worker process: run the jobs received on ``conn`` until told to stop.

    Args:
        conn: ``multiprocessing`` connection; receives ``("predict", job,
            model, images, options)`` or ``("stop",)``; sends ``(kind, job,
            payload)`` with kind ``"started"``, ``"progress"`` (``(done,
            total)``), ``"result"`` (a ``PredictionResult``),
            ``"failed"`` (a one-line message), ``"error"`` (a traceback) or
            ``"cancelled"``.
        cancelled: shared integer: every job up to this number is cancelled.
    """
    # This process is TensorFlow's alone; the package runs on TensorFlow whatever the
    # viewer's environment says (bioimageio.core sets KERAS_BACKEND on import).
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loaded = _LoadedModels()
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the viewer's process has gone
            return
        if message[0] == "stop":
            return
        _, job, model, images, options = message
        conn.send(("started", job, os.getpid()))
        _run_job(conn, job, cancelled, loaded, model, images, options)


# --------------------------------------------------------------------------- #
# The viewer's side
# --------------------------------------------------------------------------- #


class PredictionEngine:
    """The worker process, seen from the viewer: start on first use, reuse, cancel, stop.

    One prediction runs at a time (a second ``run`` while one is running
    returns ``PredictionFailed``). Thread-safe: ``run`` is meant for a napari
    worker thread, ``cancel`` and ``shutdown`` for the viewer's thread.
    """

    def __init__(self):
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._conn = None
        self._cancelled = None
        self._jobs = 0
        self._running = None  # the job being run, or None
        self._lock = threading.Lock()

    @property
    def pid(self):
        """The worker's process id, or None if it is not running."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def _start(self):
        """Start the worker process if it is not running (under ``self._lock``)."""
        if self._process is not None and self._process.is_alive():
            return
        self._stop_process()
        parent, child = self._context.Pipe()
        self._cancelled = self._context.Value("q", self._jobs, lock=False)
        self._process = self._context.Process(target=serve, args=(child, self._cancelled),
                                              name="fusionnet-tf predict", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def run(self, model, images, options):
        """Generator: predict ``images`` in the worker, reporting progress.

        Args:
            model: None (the shipped model) or a model path for ``load_model``
                (a 3D affinity model too: its offsets come from
                ``MODEL.offsets.json`` beside it).
            images: (H, W) or (N, H, W) float32 in [0, 1]; (Z, Y, X) for a
                3D model.
            options: dict of ``PredictOptions`` fields (tile_shape, overlap,
                tile_z, ...; see ``predictor_options``).

        Yields:
            ``(done, total)`` tile counts.

        Returns:
            ``PredictionResult`` (float32 membrane probability of ``images``'
            shape, or (C, Z, Y, X) affinities and their offsets),
            ``PredictionFailed`` or ``PredictionCancelled``.

        Raises:
            RuntimeError: a bug in the worker (with its traceback).
        """
        with self._lock:
            if self._running is not None:
                return PredictionFailed("a prediction is already running; wait for it or "
                                        "cancel it")
            self._start()
            self._jobs += 1
            job = self._running = self._jobs
            conn, process, cancelled = self._conn, self._process, self._cancelled
            conn.send(("predict", job, model, images, dict(options)))
        try:
            return (yield from self._replies(job, conn, process, cancelled))
        finally:
            with self._lock:
                if self._running == job:
                    self._running = None

    def _replies(self, job, conn, process, cancelled):
        """Yield the progress of ``job`` and return its outcome (see ``run``)."""
        cancel_seen = None
        while True:
            try:
                ready = conn.poll(_POLL)
            except (OSError, ValueError):  # closed by ``shutdown``
                ready = False
                time.sleep(_POLL)
            if ready:
                try:
                    kind, reply_job, payload = conn.recv()
                except (EOFError, OSError, ValueError):
                    kind = reply_job = payload = None
                if reply_job == job:
                    if kind == "progress":
                        yield payload
                    elif kind == "result":  # finished before it saw the cancel: none
                        return PredictionCancelled() if cancelled.value >= job else payload
                    elif kind == "failed":
                        return PredictionFailed(payload)
                    elif kind == "cancelled":
                        return PredictionCancelled()
                    elif kind == "error":
                        raise RuntimeError(f"the prediction process failed:\n{payload}")
                    continue
                if kind is not None:
                    continue  # a reply to an earlier, abandoned job
            if cancelled.value >= job:
                cancel_seen = cancel_seen or time.monotonic()
                if time.monotonic() - cancel_seen > CANCEL_GRACE:
                    self._terminate(process)  # busy loading or compiling: stop it the hard way
                    return PredictionCancelled()
            if not process.is_alive():
                if cancelled.value >= job:
                    return PredictionCancelled()
                return PredictionFailed(
                    f"the prediction process stopped unexpectedly (exit code "
                    f"{process.exitcode}); the next run starts a new one")

    def cancel(self):
        """Cancel the running prediction (the worker stops at its next tile group)."""
        with self._lock:
            if self._running is not None and self._cancelled is not None:
                self._cancelled.value = self._running

    def _terminate(self, process):
        with self._lock:
            if process is self._process:
                self._stop_process(grace=0.0)

    def _stop_process(self, grace=SHUTDOWN_GRACE):
        """Stop the worker (under ``self._lock``): ask, wait ``grace`` s, then terminate."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        if self._cancelled is not None:
            self._cancelled.value = self._jobs  # a job in progress stops at its next step
        if grace > 0 and process.is_alive():
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
            process.join(grace)
        if process.is_alive():
            process.terminate()
            process.join(SHUTDOWN_GRACE)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()

    def shutdown(self):
        """Stop the worker process (a later ``run`` starts a new one)."""
        with self._lock:
            self._stop_process()


_ENGINE = None
_USERS = 0
_ENGINE_LOCK = threading.Lock()


def shared_engine():
    """The process-wide ``PredictionEngine`` (created on first use, stopped at exit)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = PredictionEngine()
            atexit.register(_ENGINE.shutdown)
        return _ENGINE


def acquire_engine():
    """Count one more widget using the shared engine; returns it."""
    global _USERS
    engine = shared_engine()
    with _ENGINE_LOCK:
        _USERS += 1
    return engine


def release_engine(*_):
    """Count one widget fewer; the last one stops the worker process (a viewer closed)."""
    global _USERS
    with _ENGINE_LOCK:
        _USERS = max(_USERS - 1, 0)
        last = _USERS == 0
    if last and _ENGINE is not None:
        _ENGINE.shutdown()
