"""Block-wise prediction of large chunked volumes (zarr v2/v3, HDF5), on Dask.

``predict_volume(input, output, model, ...)`` cuts a ``(Z, Y, X)`` volume into
blocks, predicts each from the global tiles that overlap it (so results equal
whole-slice ``Predictor.predict`` and block borders are invisible), writes each
block as one chunk of a float32 zarr array and records it with a done-marker,
so reruns resume. Needs the ``fusionnet-tf[volumes]`` extra (zarr,
dask[distributed]); zarr and Dask are imported only when used.

Modules: ``geometry`` (pure block/tile math), ``storage`` (input/output stores,
done-markers), ``blockwise`` (one block; the per-worker Predictor cache),
``executors`` (local and Dask execution of block tasks, shared with
``segment-volume``), ``runner`` (planning, resume, summary).
"""

from fusionnet_tf.volumes.geometry import Block, block_grid
from fusionnet_tf.volumes.executors import BlockFailures
from fusionnet_tf.volumes.runner import format_summary, predict_volume
from fusionnet_tf.volumes.storage import open_volume

__all__ = ["predict_volume", "open_volume", "block_grid", "Block", "BlockFailures",
           "format_summary"]
