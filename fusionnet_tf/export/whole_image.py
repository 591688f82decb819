"""Whole-slice prediction inside a TensorFlow graph (for the serving signature).

A TF Serving client can send one raw EM slice of any size; the graph then does
what ``fusionnet_tf.inference.Predictor`` does in NumPy (without test-time
augmentation):

1. per-slice min-max normalization to float32 [0, 1], exactly
   ``fusionnet_tf.data.normalize(mode="slice")`` (constant slices become 0);
2. reflect padding at the bottom/right of slices smaller than a tile
   (``tiling.pad_to_tile``; edge padding when a side is 1 pixel);
3. the tile grid of ``tiling.compute_steps`` (first tile at 0, last tile at the
   border, interior origins on multiples of ``align = 2**depth``);
4. the model on batches of tiles;
5. blending with the NumPy weight map of ``tiling.blend_weights`` (embedded as
   a constant): sum of ``weight * prediction`` over tiles divided by the sum of
   weights, then cropping back to the slice size.

Every step is a plain TF op (no ``py_function``), so the graph runs in TF
Serving. ``tests/test_export.py`` checks each step against the NumPy
reference in ``fusionnet_tf.inference.tiling``.
"""

import tensorflow as tf


def normalize_slice(image):
    """Per-slice min-max normalization of one (H, W) slice.

    Args:
        image: (H, W) tensor of any real dtype (uint8 for the serving signature).

    Returns:
        (H, W) float32 tensor ``clip((x - min) / (max - min), 0, 1)``; all zeros
        for a constant slice. Same float32 arithmetic as
        ``fusionnet_tf.data.normalize(mode="slice")``.
    """
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x)
    hi = tf.reduce_max(x)
    scale = hi - lo
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    out = tf.where(scale > 0, (x - lo) / safe, tf.zeros_like(x))
    return tf.clip_by_value(out, 0.0, 1.0)


def _reflect_indices(size, target, edge):
    """Source indices that reflect-pad (or edge-pad) an axis of ``size`` to ``target``.

    Reflection without repeating the border pixel, repeated as often as needed
    (``np.pad(mode="reflect")``); with ``edge`` the last index is repeated.
    """
    index = tf.range(target, dtype=tf.int32)
    if_edge = tf.minimum(index, size - 1)
    period = tf.maximum(2 * (size - 1), 1)
    folded = tf.math.floormod(index, period)
    reflected = tf.where(folded < size, folded, period - folded)
    return tf.where(edge, if_edge, reflected)


def pad_to_tile(image, tile):
    """Pad a (H, W) slice at the bottom/right to at least ``tile`` x ``tile``.

    Reflect padding, or edge padding when H or W is 1, as
    ``fusionnet_tf.inference.tiling.pad_to_tile``.

    Args:
        image: (H, W) tensor.
        tile: int. Tile side.

    Returns:
        (max(H, tile), max(W, tile)) tensor of the same dtype.
    """
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    edge = tf.minimum(height, width) <= 1
    rows = _reflect_indices(height, tf.maximum(height, tile), edge)
    cols = _reflect_indices(width, tf.maximum(width, tile), edge)
    return tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)


def _snapped_origins(last, count, align):
    """Origins for ``count`` tiles: linspace(0, last) snapped down to ``align``, + last."""
    step = tf.cast(last, tf.float64) / tf.cast(count - 1, tf.float64)
    ideal = tf.range(count - 1, dtype=tf.float64) * step
    snapped = tf.cast(tf.floor(ideal), tf.int32) // align * align
    keep = tf.concat([[True], snapped[1:] != snapped[:-1]], axis=0)
    return tf.concat([tf.boolean_mask(snapped, keep), [last]], axis=0)


def compute_steps(size, tile, overlap, align=1):
    """Tile origins along one axis: the graph version of ``tiling.compute_steps``.

    Args:
        size: scalar int32 tensor >= ``tile``.
        tile, overlap, align: Python ints (already validated).

    Returns:
        1D int32 tensor of sorted origins from 0 to ``size - tile``.
    """
    last = size - tile
    max_step = tile - overlap

    def not_done(count, origins):
        return tf.reduce_max(origins[1:] - origins[:-1]) > max_step

    def more(count, origins):
        return count + 1, _snapped_origins(last, count + 1, align)

    def grid():
        count = (last + max_step - 1) // max_step + 1
        _, origins = tf.while_loop(
            not_done, more, (count, _snapped_origins(last, count, align)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])))
        return origins

    return tf.cond(last > 0, grid, lambda: tf.zeros([1], tf.int32))


def _tile_index_grid(ys, xs, tile):
    """(n, tile, tile, 2) int32 pixel coordinates of all tiles, raster order."""
    origin_y, origin_x = tf.meshgrid(ys, xs, indexing="ij")
    origin_y = tf.reshape(origin_y, [-1, 1, 1])
    origin_x = tf.reshape(origin_x, [-1, 1, 1])
    offset = tf.range(tile, dtype=tf.int32)
    rows = origin_y + offset[None, :, None] + tf.zeros_like(offset)[None, None, :]
    cols = origin_x + offset[None, None, :] + tf.zeros_like(offset)[None, :, None]
    return tf.stack([rows, cols], axis=-1)


def _predict_in_batches(predict_tiles, tiles, batch_size):
    """Run ``predict_tiles`` on (n, T, T) tiles ``batch_size`` at a time."""
    count = tf.shape(tiles)[0]
    tile = tf.shape(tiles)[1]
    batches = (count + batch_size - 1) // batch_size
    padded = tf.pad(tiles, [[0, batches * batch_size - count], [0, 0], [0, 0]])
    grouped = tf.reshape(padded, [batches, batch_size, tile, tile])
    predicted = tf.map_fn(predict_tiles, grouped, fn_output_signature=tf.float32)
    return tf.reshape(predicted, [-1, tile, tile])[:count]


def predict_slice(image, predict_tiles, weights, overlap, align, batch_size):
    """Predict one whole (H, W) slice by overlap-tile prediction in the graph.

    Args:
        image: (H, W) tensor of any real dtype, any size (raw intensities).
        predict_tiles: callable mapping (B, T, T) float32 tiles in [0, 1] to
            (B, T, T) float32 membrane probabilities.
        weights: (T, T) float32 NumPy blend weights, strictly positive
            (``tiling.blend_weights``).
        overlap: int. Minimum tile overlap in pixels.
        align: int. Interior tile origins are multiples of it (2**depth).
        batch_size: int. Tiles per model call.

    Returns:
        (H, W) float32 membrane probability.
    """
    tile = int(weights.shape[0])
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    padded = pad_to_tile(normalize_slice(image), tile)
    ys = compute_steps(tf.shape(padded)[0], tile, overlap, align)
    xs = compute_steps(tf.shape(padded)[1], tile, overlap, align)
    index = _tile_index_grid(ys, xs, tile)
    tiles = tf.gather_nd(padded, index)
    predictions = _predict_in_batches(predict_tiles, tiles, batch_size)
    weight = tf.constant(weights, tf.float32)
    count = tf.shape(index)[0]
    weight_stack = tf.tile(weight[None], [count, 1, 1])
    accumulated = tf.scatter_nd(index, predictions * weight_stack, tf.shape(padded))
    total_weight = tf.scatter_nd(index, weight_stack, tf.shape(padded))
    return (accumulated / total_weight)[:height, :width]


def predict_stack(images, predict_tiles, weights, overlap, align, batch_size):
    """``predict_slice`` over a (N, H, W) stack, each slice normalized on its own.

    Returns:
        (N, H, W) float32 membrane probability.
    """
    def one(image):
        return predict_slice(image, predict_tiles, weights, overlap, align, batch_size)

    return tf.map_fn(one, images, fn_output_signature=tf.float32)
