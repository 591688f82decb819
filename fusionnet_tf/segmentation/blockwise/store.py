"""The label arrays of a ``segment_volume`` run: create, write a block, settings, records.

The output and the pass-1 work array are zarr arrays chunked like the blocks
(``volumes.storage`` writes the chunks and the done-markers).
"""

from fusionnet_tf.segmentation.blockwise.job import MEMBRANE
from fusionnet_tf.volumes import storage

SEGMENT_ATTRS_KEY = "fusionnet_segment_volume"


def create_label_array(path, shape, chunks, dtype, attrs=None):
    """Create (replace) a zarr array of ``dtype`` filled with 0, with ``attrs``."""
    zarr = storage.import_zarr()
    storage.clear_done_markers(path)
    storage.prepare_levels(path, shape, chunks, dtype)
    array = zarr.open_array(str(path), mode="w", shape=tuple(shape), chunks=tuple(chunks),
                            dtype=dtype, fill_value=0, **storage.array_options(path))
    for key, value in (attrs or {}).items():
        array.attrs[key] = value
    return array


def write_block(path, block, data, hook=None, pass_name=None):
    """``storage.write_block``, after ``hook(pass_name, block)`` (fault injection in tests).

    The hook runs as part of the data write, so a fault it raises stands for a
    kill while the data is written: the done-marker must not exist yet.
    """
    if hook is not None:
        hook(pass_name, block)
    storage.write_block(path, block, data)


def read_attrs(output):
    """The pass-2 record of ``output`` (``max_id``, ``joins``): dict, empty before pass 2."""
    array = storage.import_zarr().open_array(str(output), mode="r")
    return dict(array.attrs.get(SEGMENT_ATTRS_KEY) or {})


def write_attrs(output, values):
    """Record ``values`` (the pass-2 ``max_id`` and ``joins``) in ``output``'s attributes."""
    array = storage.import_zarr().open_array(str(output), mode="r+")
    array.attrs[SEGMENT_ATTRS_KEY] = values


def segment_settings(name, dtype, shape, block_shape, halo, mode, params, input_kind=MEMBRANE,
                     offsets=None, global_graph=False):
    """The settings a ``segment_volume`` output records (JSON: lists, so a resume compares equal).

    A resumed run must match them (``storage.open_output_for_resume``).
    ``global_graph`` (``job.agglomerates_globally``) records ``"agglomeration":
    "global"``: pass 1 of such runs writes fragments, so outputs of versions
    that agglomerated each block are not resumed by it.
    """
    settings = {"command": "segment-volume", "input": name, "input_kind": input_kind,
                "dtype": str(dtype), "shape": list(shape), "block": list(block_shape),
                "halo": list(halo), "mode": mode, "params": params.to_dict()}
    if offsets is not None:
        settings["offsets"] = [list(offset) for offset in offsets]
    if global_graph:
        settings["agglomeration"] = "global"
    return settings


def check_same_input_kind(output, input_kind, name):
    """Refuse to resume an output segmented from the other kind of input.

    Outputs of versions that did not record ``input_kind`` were segmented
    from membrane maps.

    Raises:
        ValueError: one line naming both kinds.
    """
    recorded = storage.recorded_settings(output)
    if not recorded or recorded.get("command") != "segment-volume":
        return
    before = recorded.get("input_kind", MEMBRANE)
    if before != input_kind:
        raise ValueError(f"output {output} was started from a {before} input, but {name} holds "
                         f"{input_kind}; choose another output or pass --overwrite")
