"""Training FusionNet / U-Net with ``model.fit``: config, losses, metrics, callbacks.

Entry points: ``load_config`` (YAML/JSON + ``KEY=VALUE`` overrides),
``check_config`` (everything that can fail before training) and
``train(config)`` (config -> datasets -> model -> compile -> fit, resumable).
TensorFlow is imported lazily, so ``fusionnet train --help`` stays fast.

Example:
>>> from fusionnet_tf.training import load_config, train
>>> result = train(load_config("training/configs/isbi2012.yaml", ["epochs=1"]))
"""

from fusionnet_tf.lazy import lazy_attributes

from fusionnet_tf.training.config import (  # noqa: F401  (argparse-level, no TF)
    TrainConfig,
    check_config,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

_LAZY = {
    "train": "fusionnet_tf.training.run",
    "TrainResult": "fusionnet_tf.training.run",
    "get_loss": "fusionnet_tf.training.losses",
    "fit_metrics": "fusionnet_tf.training.fit_metrics",
    "ResumableBackup": "fusionnet_tf.training.callbacks",
    "Checkpoints": "fusionnet_tf.training.callbacks",
    "plot_training_curves": "fusionnet_tf.training.callbacks",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted(_LAZY) + ["TrainConfig", "check_config", "config_from_dict",
                           "config_to_dict", "load_config", "save_config"]
