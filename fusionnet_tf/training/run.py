"""``train(config)``: config -> datasets -> model -> compile -> fit.

The run folder (``config.output_dir``) receives:

- ``config.yaml``: the resolved config (every default filled in);
- ``latest.keras`` (every epoch) and ``best.keras`` (+ ``best.json``);
- ``log.csv`` (one row per epoch), ``curves.png`` (at the end),
  ``tensorboard/`` (TensorBoard event files);
- ``backup/``: the resumable state (weights, optimizer, position).

Running ``train`` again with the same config and output folder resumes where
the previous run stopped: the same step, the same data position, the same
optimizer state. A finished run is not retrained (raise ``epochs`` to train
longer). Starting a *different* config in a used folder is refused.
"""

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

from fusionnet_tf.training import config as config_lib

CONFIG_FILE = "config.yaml"
CSV_FILE = "log.csv"
CURVES_FILE = "curves.png"
BACKUP_DIR = "backup"
# Keys that may change between a run and its resumption.
RESUMABLE_KEYS = ("epochs", "early_stopping_patience", "isbi_eval_every", "tensorboard",
                  "intra_op_threads", "inter_op_threads", "backup_every_steps")


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns.

    Attributes:
        history: dict ``{log key: list of float}``, one value per epoch of the
            whole run (including epochs done before a resume).
        output_dir: Path of the run folder.
        latest_path: Path of ``latest.keras``.
        best_path: Path of ``best.keras`` (may not exist without improvement).
        model: the trained ``keras.Model``.
        initial_epoch: epochs already done when this call started.
        initial_step: steps of the interrupted epoch already done.
    """

    history: dict
    output_dir: Path
    latest_path: Path
    best_path: Path
    model: object
    initial_epoch: int = 0
    initial_step: int = 0


# ---------------------------------------------------------------- run folder


def _comparable(mapping):
    mapping = dict(mapping)
    for key in RESUMABLE_KEYS:
        mapping.pop(key, None)
    return mapping


def _with_defaults(mapping):
    """A saved config with the defaults of keys added since it was written."""
    try:
        return config_lib.config_to_dict(config_lib.config_from_dict(mapping))
    except (ValueError, TypeError):  # unreadable: compare as written
        return mapping


def prepare_output_dir(config, write=True):
    """Create the run folder and write ``config.yaml``; refuse a foreign run.

    Raises:
        FileExistsError: ``output_dir`` holds a run with a different config
            (other than the keys in ``RESUMABLE_KEYS``).
    """
    import yaml

    out = Path(config.output_dir)
    previous = out / CONFIG_FILE
    if previous.is_file():
        old = _with_defaults(yaml.safe_load(previous.read_text()) or {})
        new = config_lib.config_to_dict(config)
        if _comparable(old) != _comparable(new):
            changed = sorted(k for k in set(old) | set(new)
                             if k not in RESUMABLE_KEYS and old.get(k) != new.get(k))
            raise FileExistsError(
                f"output_dir {out} holds a run with a different config "
                f"(differs in: {', '.join(changed)}); choose another output_dir "
                "or delete the folder"
            )
    if write:
        out.mkdir(parents=True, exist_ok=True)
        config_lib.save_config(config, previous)
    return out


# ---------------------------------------------------------------- data


def load_split(images_spec, labels_spec, slices, key, data):
    """Read one split and keep the selected slices.

    Returns:
        (images (N, H, W) in their stored dtype, labels uint8 (N, H, W) in
        {0, 1}, 1 = membrane). Normalization happens in the datasets.

    Raises:
        ValueError: images and labels of different shapes, bad slices.
    """
    import numpy as np

    from fusionnet_tf.data import read_labels, read_stack

    images = read_stack(images_spec)
    labels = read_labels(labels_spec, convention=data.label_convention,
                         threshold=data.label_threshold, boundary_width=data.boundary_width)
    if images.shape != labels.shape:
        raise ValueError(
            f"images {images_spec} have shape {images.shape} but labels "
            f"{labels_spec} have shape {labels.shape}"
        )
    index = config_lib.parse_slices(slices, images.shape[0], key=key)
    return np.asarray(images[index]), np.asarray(labels[index], dtype="uint8")


def load_data(config):
    """Return ``(train_images, train_labels, val_images, val_labels)``.

    Validation arrays are None when the config defines no validation data.
    """
    split = load_split
    if config_lib.is_3d(config):
        from fusionnet_tf.training.run3d import load_split as split
    d = config.data
    train = split(d.train_images, d.train_labels, d.train_slices, "data.train_slices", d)
    if not config_lib.has_validation(config):
        return (*train, None, None)
    val = split(d.val_images or d.train_images, d.val_labels or d.train_labels,
                d.val_slices, "data.val_slices", d)
    return (*train, *val)


def make_datasets(config, arrays, batch_size, start_batch=0):
    """Build the training (infinite) and validation (finite) ``tf.data`` pipelines.

    Args:
        config: TrainConfig.
        arrays: output of :func:`load_data`.
        batch_size: int. Global batch size.
        start_batch: int. First batch of the training stream (for resuming:
            the same batches as skipping that many, without computing them).

    Returns:
        (train_ds, val_ds or None), batches of ((B, T, T, 1), (B, T, T, 1)) float32.
    """
    return (make_train_stream(config, arrays, batch_size, start_batch),
            make_validation_dataset(config, arrays, batch_size))


def make_validation_dataset(config, arrays, batch_size):
    """The fixed validation tiles as a finite ``tf.data.Dataset``, or None without validation slices."""
    if config_lib.is_3d(config):
        from fusionnet_tf.training import run3d

        return run3d.make_validation_dataset(config, arrays, batch_size)
    from fusionnet_tf.data import validation_dataset

    _, _, val_images, val_labels = arrays
    val_ds = None
    if val_images is not None:
        val_ds = validation_dataset(val_images, val_labels,
                                    config.data.val_tile_size or config.data.tile_size,
                                    batch_size, normalization=config.data.normalization)
    return val_ds


def train_element_spec(config, batch_size):
    """``element_spec`` of the training stream, without building it: (image, label) specs."""
    import tensorflow as tf

    if config_lib.is_3d(config):
        from fusionnet_tf.training import run3d

        return run3d.train_element_spec(config, batch_size)
    side = config.data.tile_size
    spec = tf.TensorSpec((batch_size, side, side, 1), tf.float32)
    return (spec, spec)


def make_train_stream(config, arrays, batch_size, start_batch=0):
    """The endless training ``tf.data.Dataset``, starting at batch ``start_batch``."""
    if config_lib.is_3d(config):
        from fusionnet_tf.training import run3d

        return run3d.make_train_stream(config, arrays, batch_size, start_batch)
    from fusionnet_tf.data import train_dataset

    train_images, train_labels = arrays[:2]
    return train_dataset(train_images, train_labels, config.data.tile_size, batch_size,
                         augment=config_lib.check_augment(config.augment), seed=config.seed,
                         normalization=config.data.normalization, start_batch=start_batch)


# ---------------------------------------------------------------- model


def make_learning_rate(opt, total_steps):
    """Learning rate (float or schedule) for ``opt`` (an OptimizerConfig).

    ``constant``: ``learning_rate`` after a linear warm-up of ``warmup_steps``
    from 0; ``cosine``: warm-up, then cosine decay to
    ``learning_rate * min_lr_ratio`` at ``total_steps``.
    """
    import keras

    if opt.schedule == "constant" and not opt.warmup_steps:
        return opt.learning_rate
    warmup = opt.warmup_steps
    # alpha=1 turns the cosine into a constant after the warm-up.
    alpha = 1.0 if opt.schedule == "constant" else opt.min_lr_ratio
    decay_steps = max(1, total_steps - warmup)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(opt.learning_rate, decay_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, alpha=alpha, warmup_target=opt.learning_rate, warmup_steps=warmup)


def make_optimizer(opt, total_steps):
    """Keras Adam or AdamW from an OptimizerConfig."""
    import keras

    learning_rate = make_learning_rate(opt, total_steps)
    kwargs = {"learning_rate": learning_rate}
    if opt.clipnorm:
        kwargs["clipnorm"] = opt.clipnorm
    if opt.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=opt.weight_decay, **kwargs)
    return keras.optimizers.Adam(**kwargs)


def build_and_compile(config):
    """Build the model from ``config.model`` and compile it (call under a strategy scope).

    Under ``mirrored``/``multiworker`` the gradients are all-reduced every
    step, so the trainable weights stay identical on all replicas; the
    BatchNormalization moving statistics are Keras's per-replica estimates
    (from each replica's share of the batch) and the chief's are saved.
    """
    from fusionnet_tf.models import build_model
    from fusionnet_tf.training.finetune import freeze
    from fusionnet_tf.training.fit_metrics import fit_metrics
    from fusionnet_tf.training.losses import get_loss

    m = config.model
    if config_lib.is_3d(config):
        from fusionnet_tf.training import run3d

        model = run3d.build_model(config)
        loss, metrics = run3d.loss_and_metrics(config)
    else:
        model = build_model(m.architecture, base_filters=m.base_filters, depth=m.depth,
                            residual_convs=m.residual_convs, dropout=m.dropout,
                            normalization=m.normalization, fc_filters=m.fc_filters)
        loss = get_loss(config.loss.name, membrane_weight=config.loss.membrane_weight,
                        dice_weight=config.loss.dice_weight, smooth=config.loss.smooth)
        metrics = fit_metrics()
    freeze(model, m.freeze, m.architecture)  # before compiling: the optimizer skips frozen weights
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.epochs * config.steps_per_epoch),
        loss=loss,
        metrics=metrics,
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    model.optimizer.build(model.trainable_variables)
    if config.fused_batchnorm:
        from fusionnet_tf.training.fused_batchnorm import use_fused_batchnorm

        use_fused_batchnorm(model)
    return model


# ---------------------------------------------------------------- callbacks


def make_callbacks(config, out, chief, backup, val_arrays=None, extra=()):
    """The callback list, in the order the logs must flow through them."""
    import keras

    from fusionnet_tf.training import callbacks as cb

    items = []
    if config.isbi_eval_every and val_arrays is not None:
        items.append(cb.IsbiEvaluation(*val_arrays, every=config.isbi_eval_every,
                                       tile_shape=config.data.val_tile_size
                                       or config.data.tile_size))
    items.append(keras.callbacks.TerminateOnNaN())
    if chief:
        items.append(keras.callbacks.CSVLogger(str(out / CSV_FILE), append=True))
        if config.tensorboard and _tensorboard_available():
            items.append(keras.callbacks.TensorBoard(str(out / "tensorboard"),
                                                     write_graph=False))
    # Every worker saves (reading mirrored variables may need all workers);
    # the non-chief ones into a scratch folder that train() deletes.
    checkpoint_dir = out if chief else Path(tempfile.mkdtemp(prefix="fusionnet_worker_"))
    items.append(cb.Checkpoints(checkpoint_dir, monitor=config.checkpoint_monitor))
    if config.early_stopping_patience:
        items.append(keras.callbacks.EarlyStopping(monitor=config.checkpoint_monitor,
                                                   patience=config.early_stopping_patience,
                                                   mode="auto" if "loss" in config.checkpoint_monitor
                                                   else "max"))
    items.append(cb.TrainingCurvePlot(out / CSV_FILE, out / CURVES_FILE, enabled=chief))
    items.extend(extra)
    items.append(backup)
    return items


def _tensorboard_available():
    import importlib.util
    import warnings

    if importlib.util.find_spec("tensorboard") is None:
        warnings.warn("tensorboard is not installed: no TensorBoard logs "
                      "(pip install tensorboard, or set tensorboard: false)", stacklevel=3)
        return False
    return True


def _backup_dir(out, strategy):
    from fusionnet_tf.training.strategy import is_chief, worker_index

    if is_chief(strategy):
        return out / BACKUP_DIR
    return out / f"{BACKUP_DIR}_worker{worker_index()}"


# ---------------------------------------------------------------- train


def work_around_multiworker_build(model, element_spec):
    """Let Keras 3 ``fit`` run under ``MultiWorkerMirroredStrategy``.

    Two Keras 3 problems are worked around (keras-team/keras#20585). Keras
    3's TF trainer builds the model state from a first batch that it
    averages across replicas with ``strategy.reduce``, which fails under
    MultiWorkerMirroredStrategy ("Attempt to convert a value (PerReplica...)",
    keras-team/keras#20585). The build only needs shapes, so this feeds it a
    zero batch shaped like ``element_spec`` instead. It also averages
    the scalar step logs with ``strategy.reduce("MEAN", axis=0)``, which fails
    on scalars: see ``fusionnet_tf._compat.patch_multiworker_reduce``.

    Args:
        model: compiled ``keras.Model`` (built under the strategy scope).
        element_spec: ``element_spec`` of the (non-distributed) training dataset.
    """
    import numpy as np

    from fusionnet_tf import _compat

    def zeros(spec):
        shape = [1 if size is None else size for size in spec.shape]
        return np.zeros(shape, spec.dtype.as_numpy_dtype)

    _compat.symbolic_build_from(model, tuple(zeros(spec) for spec in element_spec))
    _compat.patch_multiworker_reduce()


def fit_from(model, train_stream, val_ds, callbacks, config, epoch, step, verbose):
    """Run ``fit`` from (epoch, step) to ``config.epochs``, consuming the data in order.

    ``train_stream(start_batch)`` returns the training dataset starting at
    that batch; it starts after the ``epoch * steps_per_epoch + step``
    batches already used. A partly done epoch is finished first by a ``fit``
    of the remaining steps, then the whole epochs follow.
    """
    steps = config.steps_per_epoch
    backup = callbacks[-1]
    if step:
        print(f"Resuming epoch {epoch + 1}/{config.epochs} at step {step}/{steps}", flush=True)
        backup.step_offset = step
        model.fit(train_stream(epoch * steps + step), validation_data=val_ds,
                  initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps - step,
                  validation_steps=config.validation_steps, callbacks=callbacks,
                  shuffle=False, verbose=verbose)
        epoch += 1
        if model.stop_training:
            return
    elif 0 < epoch < config.epochs:
        print(f"Resuming at epoch {epoch + 1}/{config.epochs}", flush=True)
    if epoch < config.epochs:
        model.fit(train_stream(epoch * steps), validation_data=val_ds,
                  initial_epoch=epoch, epochs=config.epochs, steps_per_epoch=steps,
                  validation_steps=config.validation_steps, callbacks=callbacks,
                  shuffle=False, verbose=verbose)


def setup_run(config):
    """Check the config, then set threads, precision and the distribution strategy.

    Returns:
        ``(strategy, global batch size, chief)``; ``chief`` is True on the
        process that writes the run folder.

    Raises:
        ValueError / FileNotFoundError / FileExistsError: as ``train``.
    """
    from fusionnet_tf.training import strategy as strategy_lib

    config_lib.check_config(config)
    prepare_output_dir(config, write=False)
    strategy_lib.configure_threads(config.intra_op_threads, config.inter_op_threads)
    strategy_lib.set_precision(config.precision)
    strategy = strategy_lib.make_strategy(config.strategy)
    batch_size = strategy_lib.global_batch_size(config.batch_size, config.batch_size_is_global,
                                                strategy.num_replicas_in_sync)
    return strategy, batch_size, strategy_lib.is_chief(strategy)


def build_for_run(config, strategy, batch_size, out):
    """The compiled model (under ``strategy``) and its ``ResumableBackup`` (not restored yet)."""
    from fusionnet_tf.training import callbacks as cb

    with strategy.scope():
        model = build_and_compile(config)
    backup = cb.ResumableBackup(_backup_dir(out, strategy), config.backup_every_steps,
                                config.steps_per_epoch)
    if config.strategy == "multiworker":
        work_around_multiworker_build(model, train_element_spec(config, batch_size))
    return model, backup


def isbi_arrays(config, arrays):
    """Normalized validation images and labels for ``IsbiEvaluation``, or None when it is off."""
    if arrays[2] is None or not config.isbi_eval_every:
        return None
    from fusionnet_tf.data import normalize

    return normalize(arrays[2], mode=config.data.normalization), arrays[3]


def _remove_worker_scratch(callback_list, out):
    """Delete the checkpoint folders of non-chief workers (anything outside ``out``)."""
    from fusionnet_tf.training import callbacks as cb

    for item in callback_list:
        if isinstance(item, cb.Checkpoints) and item.directory != out:
            shutil.rmtree(item.directory, ignore_errors=True)


def train(config, callbacks=(), verbose="auto"):
    """Train a model as ``config`` says; resume if the run folder holds a backup.

    Args:
        config: TrainConfig (see ``fusionnet_tf.training.config``).
        callbacks: extra ``keras.callbacks.Callback`` objects, run after the
            built-in ones and before the backup.
        verbose: Keras ``fit`` verbosity (``"auto"``: progress bar).

    Returns:
        TrainResult.

    Raises:
        ValueError / FileNotFoundError: bad config, before any training.
        FileExistsError: ``output_dir`` holds a run with a different config.

    Example:
    >>> cfg = load_config("training/configs/smoke.yaml", ["output_dir=/tmp/run"])
    >>> result = train(cfg)
    >>> result.history["val_dice"][-1]
    """
    import keras

    from fusionnet_tf.training import callbacks as cb

    strategy, batch_size, chief = setup_run(config)
    init_model = _init_model(config, strategy)
    arrays = load_data(config)
    keras.utils.set_random_seed(config.seed)
    val_ds = make_validation_dataset(config, arrays, batch_size)
    model, backup = build_for_run(config, strategy, batch_size, Path(config.output_dir))
    if init_model is not None:  # before anything is written: a mismatch leaves no run folder
        from fusionnet_tf.training.finetune import initialize_from

        initialize_from(model, init_model, config.model.init)
    out = prepare_output_dir(config, write=chief) if chief else Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if chief and config_lib.is_3d(config):
        from fusionnet_tf.training import run3d

        run3d.write_offsets_sidecars(config, out)
    epoch, step = backup.restore(model)  # after init: a backup's weights always win
    state = cb.read_backup_state(backup.backup_path) or {}
    if chief:
        cb.truncate_csv_log(out / CSV_FILE, epoch)
    callback_list = make_callbacks(config, out, chief, backup, isbi_arrays(config, arrays),
                                   callbacks)
    try:
        if state.get("stopped"):
            print(f"Run in {out} stopped early at epoch {epoch}; nothing to do", flush=True)
        else:
            fit_from(model, lambda start: make_train_stream(config, arrays, batch_size, start),
                     val_ds, callback_list, config, epoch, step, verbose)
    finally:
        _remove_worker_scratch(callback_list, out)
    return TrainResult(
        history=_history(out / CSV_FILE),
        output_dir=out,
        latest_path=out / "latest.keras",
        best_path=out / "best.keras",
        model=model,
        initial_epoch=epoch,
        initial_step=step,
    )


def _init_model(config, strategy):
    """The ``model.init`` model to start from, or None (no init, or a run that resumes).

    A run folder with a backup resumes from its own weights: ``init`` is
    applied once, when the run starts, never over resumed weights.
    """
    from fusionnet_tf.training import callbacks as cb
    from fusionnet_tf.training.finetune import load_init_model

    if not config.model.init:
        return None
    if cb.read_backup_state(_backup_dir(Path(config.output_dir), strategy)) is not None:
        return None
    return load_init_model(config.model.init)


def _history(csv_path):
    from fusionnet_tf.training.callbacks import read_csv_log

    log = read_csv_log(csv_path)
    return {key: [v for v in values] for key, values in log.items()
            if not all(math.isnan(v) for v in values) or key.startswith("val_v_")}
