"""Callbacks for ``fit``: resumable backup, checkpoints, curves, ISBI scores.

- :class:`ResumableBackup` does what ``keras.callbacks.BackupAndRestore`` does
  but resumes *mid-epoch*: it saves the weights, the optimizer state, the running
  metric sums and the (epoch, step) position every ``save_freq`` steps and at
  every epoch end, crash-safely (a new weights file, then an atomic
  ``state.json`` pointing at it). Keras's own callback restores only the
  epoch, so a run killed mid-epoch would redo that epoch's finished steps.
- :class:`Checkpoints` writes ``latest.keras`` every epoch and ``best.keras``
  when the monitored value improves, atomically; the best value is kept in
  ``best.json`` so a resumed run does not overwrite a better model.
- :class:`TrainingCurvePlot` draws the CSV log as a PNG at the end of a run.
- :class:`IsbiEvaluation` adds ``val_v_rand`` / ``val_v_info`` (ISBI 2012
  scores on whole validation slices) to the logs every N epochs.
"""

import csv
import json
import math
from pathlib import Path

import keras
import numpy as np

from fusionnet_tf.checks import check_int
from fusionnet_tf.io.outputs import atomic_path

STATE_FILE = "state.json"


def _write_json(path, payload):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2))


def _finite(logs, key="loss"):
    value = (logs or {}).get(key)
    if value is None:
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def read_backup_state(backup_dir):
    """The saved training position in ``backup_dir``, or None if there is none.

    Returns:
        dict with ``epoch`` (epochs completed), ``step`` (steps done in epoch
        ``epoch``), ``global_step``, ``steps_per_epoch``, ``weights`` (file
        name), ``metrics`` (running metric variable values), ``stopped``.
    """
    path = Path(backup_dir) / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


class ResumableBackup(keras.callbacks.Callback):
    """Like ``keras.callbacks.BackupAndRestore``, but resumes at the exact step, not the epoch start.

    A plain ``Callback`` (public API only): Keras's callback keeps its
    save-frequency bookkeeping in private attributes and restores whole
    epochs only.

    Call :meth:`restore` after compiling and before ``fit``; it returns the
    (epoch, step) to continue from. ``fusionnet_tf.training.run`` then runs
    the rest of the interrupted epoch (``steps_per_epoch - step`` steps, with
    the data iterator advanced by the batches already consumed) and the
    remaining epochs, so the optimizer sees exactly the batches an
    uninterrupted run would have seen.

    Args:
        backup_dir: str or Path. Folder for ``state.json`` and
            ``ckpt-{global_step}.weights.h5`` (used by nothing else).
        save_freq: int. Save every ``save_freq`` training steps (and always at
            the end of an epoch).
        steps_per_epoch: int. Steps of a full epoch (the restore refuses a
            state written with a different value).

    Example:
    >>> backup = ResumableBackup("runs/x/backup", save_freq=25, steps_per_epoch=100)
    >>> epoch, step = backup.restore(model)
    """

    def __init__(self, backup_dir, save_freq, steps_per_epoch):
        super().__init__()
        self.save_freq = check_int("save_freq", save_freq, 1)
        self.backup_path = Path(backup_dir)
        self._last_batch_seen = -1  # no batch yet: the first report at batch b is b + 1 steps
        self._batches_since_save = 0
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_offset = 0
        self._epoch = 0
        self._pending_metrics = None
        self._restored = False

    # --- restoring

    def restore(self, model):
        """Load the saved state into ``model`` (compiled, optimizer built).

        Returns:
            (epoch, step): the epoch to continue and the steps of it already
            done; (0, 0) when there is no saved state.

        Raises:
            ValueError: the state was written with another ``steps_per_epoch``.
        """
        self._model = model
        self._restored = True
        state = read_backup_state(self.backup_path)
        if state is None:
            return 0, 0
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"cannot resume from {self.backup_path}: it was written with "
                f"steps_per_epoch={state['steps_per_epoch']}, the config has "
                f"steps_per_epoch={self.steps_per_epoch}"
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.backup_path / state["weights"])
        self._epoch, self.step_offset = state["epoch"], state["step"]
        self._pending_metrics = state.get("metrics") if state["step"] else None
        return state["epoch"], state["step"]

    def on_train_begin(self, logs=None):
        if not self._restored:
            self.restore(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _add_pending_metrics(self):
        """Add the interrupted epoch's metric sums to the fresh ones.

        Keras metrics are sums (total/count, TP/FP/FN), so adding the saved
        values after the first resumed step gives the same epoch averages as
        an uninterrupted epoch. (Compiled metrics only exist after the first
        step, which is why this cannot happen at epoch begin.)
        """
        variables = self.model.metrics_variables
        if len(variables) == len(self._pending_metrics):
            for variable, value in zip(variables, self._pending_metrics):
                variable.assign_add(np.asarray(value, dtype=variable.dtype))
        self._pending_metrics = None

    # --- saving

    def _save_due(self, batch):
        """Count the steps up to ``batch`` (0-based in the epoch; jumps with steps_per_execution).

        ``_last_batch_seen`` is -1 before an epoch's first report, so batch 1
        reported first (steps_per_execution=2) counts as 2 steps.
        """
        new = batch + 1 if batch <= self._last_batch_seen else batch - self._last_batch_seen
        self._batches_since_save += new
        self._last_batch_seen = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            return True
        return False

    def on_train_batch_end(self, batch, logs=None):
        if self._pending_metrics is not None:
            self._add_pending_metrics()
        if self._save_due(batch) and _finite(logs):
            self.save_state(self._epoch, self.step_offset + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._last_batch_seen = -1
        self._batches_since_save = 0
        self.step_offset = 0
        if _finite(logs):
            self.save_state(epoch + 1, 0)

    def on_train_end(self, logs=None):
        if self.model.stop_training and _finite(logs):
            state = read_backup_state(self.backup_path)
            if state is not None:
                state["stopped"] = True
                _write_json(self.backup_path / STATE_FILE, state)

    def save_state(self, epoch, step):
        """Write weights + optimizer + metric sums and the (epoch, step) position."""
        self.backup_path.mkdir(parents=True, exist_ok=True)
        if step >= self.steps_per_epoch:
            epoch, step = epoch + 1, 0
        global_step = epoch * self.steps_per_epoch + step
        weights_name = f"ckpt-{global_step}.weights.h5"
        with atomic_path(self.backup_path / weights_name) as tmp:
            self.model.save_weights(tmp)
        state = {
            "epoch": epoch,
            "step": step,
            "global_step": global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "weights": weights_name,
            "metrics": [np.asarray(v).tolist() for v in self.model.metrics_variables],
            "stopped": False,
        }
        _write_json(self.backup_path / STATE_FILE, state)
        for old in self.backup_path.glob("ckpt-*.weights.h5"):
            if old.name != weights_name:
                old.unlink(missing_ok=True)


class Checkpoints(keras.callbacks.Callback):
    """Save ``latest.keras`` every epoch and ``best.keras`` on improvement.

    Args:
        directory: str or Path of the run folder.
        monitor: str. Log key deciding ``best.keras`` (``val_loss``,
            ``val_dice``, ``loss``, ``dice``).
        mode: ``"min"`` or ``"max"``; defaults to ``max`` for keys containing
            ``dice``, ``iou`` or ``accuracy``, else ``min``.
        enabled: bool. False on non-chief workers (nothing is written).
    """

    def __init__(self, directory, monitor="val_loss", mode=None, enabled=True):
        super().__init__()
        self.directory = Path(directory)
        self.monitor = monitor
        if mode is None:
            mode = "max" if any(k in monitor for k in ("dice", "iou", "accuracy")) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max'; received {mode!r}")
        self.mode = mode
        self.enabled = enabled
        self.latest_path = self.directory / "latest.keras"
        self.best_path = self.directory / "best.keras"
        self.best_info_path = self.directory / "best.json"
        self.best = self._read_best()

    def _read_best(self):
        if self.best_info_path.is_file():
            info = json.loads(self.best_info_path.read_text())
            if info.get("monitor") == self.monitor:
                return float(info["value"])
        return None

    def _improved(self, value):
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        logs = logs or {}
        if not _finite(logs):
            return
        with atomic_path(self.latest_path) as tmp:
            self.model.save(tmp)
        value = logs.get(self.monitor)
        if value is not None and self._improved(float(value)):
            self.best = float(value)
            with atomic_path(self.best_path) as tmp:
                self.model.save(tmp)
            _write_json(self.best_info_path,
                        {"monitor": self.monitor, "mode": self.mode,
                         "value": self.best, "epoch": epoch + 1})


def read_csv_log(path):
    """Read a Keras ``CSVLogger`` file into ``{column: list of float}``."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = {}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = float("nan")
            columns.setdefault(key, []).append(number)
    return columns


def truncate_csv_log(path, epochs_done):
    """Drop rows of epochs >= ``epochs_done`` (written before a crash).

    A run killed between logging an epoch and backing it up redoes that
    epoch; this keeps exactly one row per finished epoch.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [row for row in body if row and int(float(row[0])) < epochs_done]
    if len(kept) == len(body):
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(kept)


class TrainingCurvePlot(keras.callbacks.Callback):
    """Draw the CSV log (loss, Dice, ISBI scores by epoch) as a PNG at train end.

    Args:
        csv_path: str or Path of the ``CSVLogger`` file.
        png_path: str or Path of the figure to write.
        enabled: bool. False on non-chief workers.
    """

    PANELS = (("loss", "loss"), ("dice", "membrane Dice"), ("v_rand", "ISBI V_rand / V_info"))

    def __init__(self, csv_path, png_path, enabled=True):
        super().__init__()
        self.csv_path = Path(csv_path)
        self.png_path = Path(png_path)
        self.enabled = enabled

    def on_train_end(self, logs=None):
        if self.enabled:
            plot_training_curves(self.csv_path, self.png_path)


def plot_training_curves(csv_path, png_path):
    """Write a PNG of the training curves in ``csv_path``; return its path or None.

    Panels: loss (train, val), membrane Dice (train, val), and ISBI
    V_rand / V_info when the log has them. Nothing is written for an empty log.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    log = read_csv_log(csv_path)
    if not log.get("epoch"):
        return None
    epochs = np.asarray(log["epoch"]) + 1
    panels = [("loss", ["loss", "val_loss"]), ("membrane Dice", ["dice", "val_dice"])]
    if any(np.isfinite(log.get("val_v_rand", [np.nan])).tolist()):
        panels.append(("ISBI score (higher is better)", ["val_v_rand", "val_v_info"]))
    figure = Figure(figsize=(4.5 * len(panels), 3.6))
    FigureCanvasAgg(figure)
    for index, (title, keys) in enumerate(panels, start=1):
        axis = figure.add_subplot(1, len(panels), index)
        for key in keys:
            if key in log:
                values = np.asarray(log[key], dtype=float)
                keep = np.isfinite(values)
                axis.plot(epochs[keep], values[keep], marker="o", markersize=3, label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return png_path


class IsbiEvaluation(keras.callbacks.Callback):
    """Every ``every`` epochs, add ISBI 2012 V_rand / V_info on whole slices.

    Predicts the validation slices with ``fusionnet_tf.inference.Predictor``
    (no test-time augmentation) and scores them with
    ``fusionnet_tf.metrics.isbi_scores``; writes ``val_v_rand`` and
    ``val_v_info`` into the epoch logs (NaN on epochs that are skipped, so
    the CSV log keeps a fixed set of columns). Place it before the loggers.

    Args:
        images: (N, H, W) float32 in [0, 1], normalized like training input.
        labels: (N, H, W) uint8 in {0, 1}, 1 = membrane.
        every: int >= 1. Evaluate after epochs ``every``, ``2 * every``, ...
        tile_shape: int. Predictor tile size (a multiple of ``2**depth``).
        batch_size: int. Predictor batch size.
    """

    KEYS = ("val_v_rand", "val_v_info")

    def __init__(self, images, labels, every, tile_shape=512, batch_size=1):
        super().__init__()
        self.images = images
        self.labels = labels
        self.every = int(every)
        self.tile_shape = int(tile_shape)
        self.batch_size = int(batch_size)

    def scores(self):
        """Return ``isbi_scores`` of the current model on the validation slices."""
        from fusionnet_tf.inference import Predictor
        from fusionnet_tf.metrics import isbi_scores

        predictor = Predictor(self.model, tile_shape=self.tile_shape,
                              overlap=self.tile_shape // 8, tta=1,
                              batch_size=self.batch_size)
        probability = predictor.predict(self.images)
        return isbi_scores(probability, self.labels)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if (epoch + 1) % self.every:
            for key in self.KEYS:
                logs[key] = float("nan")
            return
        scores = self.scores()
        logs["val_v_rand"] = float(scores["v_rand"])
        logs["val_v_info"] = float(scores["v_info"])
