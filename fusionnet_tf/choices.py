"""The allowed values of string/int options, as plain data (no NumPy, no TensorFlow).

One home for the choice tuples that both the library (argument checks) and the
``fusionnet`` command line (``argparse`` ``choices=``) use. Importing this
module costs nothing, so building the CLI parser (``fusionnet --help``) stays
free of NumPy and TensorFlow. The library modules re-export these names
(``fusionnet_tf.data.labels.LABEL_CONVENTIONS``, ...), so either import works.
"""

# how a label file reads (fusionnet_tf.data.labels): "isbi" = 0 is membrane,
# nonzero is cell interior; "membrane" = nonzero is membrane; "instance" = one id
# per cell (0 = gap, e.g. SNEMI3D), boundaries where the id changes
LABEL_CONVENTIONS = ("isbi", "membrane", "instance")

# how a stored probability map reads (fusionnet_tf.inference.writers):
# high = membrane, or high = cell interior (ISBI 2012 submissions, predict --isbi)
PRED_CONVENTIONS = ("membrane", "isbi")

# dtype of a written TIFF/HDF5 prediction; uint8 is probability x 255
DTYPES = ("float32", "uint8")

# intensity normalization to [0, 1] (fusionnet_tf.data.normalize)
NORMALIZATION_MODES = ("slice", "global", "dtype")

# tile blending weights (fusionnet_tf.inference.tiling)
BLENDINGS = ("gaussian", "cosine", "constant")

# Keras dtype policies a model can compute in, for training and inference alike
# (fusionnet_tf.training.strategy, fusionnet_tf.inference.optimize)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

# inference precision: a Keras policy above, or "auto" = float32, or mixed_bfloat16
# where the machine has bfloat16 matrix units and it is faster (fusionnet_tf.inference.autotune)
INFERENCE_PRECISION_CHOICES = PRECISIONS + ("auto",)

# how the Predictor runs a Keras model: "plain" (BatchNorm folded, TensorFlow's
# oneDNN kernels, weights as variables), "frozen" (plain
# with the weights always graph constants: faster calls for wide models, slower
# set-up), "xla" (jit_compile), "auto" = the fastest of them on this machine for
# the job, timed once and cached (fusionnet_tf.inference.autotune)
ENGINES = ("auto", "plain", "frozen", "xla")

# tta -> dihedral transform indices (see fusionnet_tf.dihedral):
# 1 = identity; 4 = identity, rot180, flip W, flip H (the mirrorings);
# 8 = all rotations and flips (fusionnet_tf.inference.predictor)
TTA_TRANSFORMS = {1: (0,), 4: (0, 2, 4, 6), 8: tuple(range(8))}
TTA_VALUES = tuple(TTA_TRANSFORMS)
# 3D affinity models: transform t = in-plane dihedral t % 8, then for t >= 8 a z-flip
# (fusionnet_tf.inference.affinity_tta); 2 = identity and z-flip, 16 = all
TTA_TRANSFORMS_3D = {1: (0,), 2: (0, 8), 4: (0, 2, 4, 6), 8: tuple(range(8)),
                     16: tuple(range(16))}
TTA_VALUES_3D = tuple(TTA_TRANSFORMS_3D)
