"""Block-wise segmentation of volumes too large for memory (``segment-volume``).

``segment_volume(input, output, ...)`` reads a ``(Z, Y, X)`` membrane map
lazily (zarr v2/v3 or HDF5, as ``fusionnet_tf.volumes.open_volume``), or
``(C, Z, Y, X)`` affinities with their offsets (``data.affinity_io``), and
writes a uint64 zarr label volume whose ids are consistent across blocks. It
runs in passes, locally or on Dask (``fusionnet_tf.volumes.executors``), and
every pass is resumable:

0. *check*: per-block minima and maxima; a map outside [0, 1], with NaN or of
   an integer type other than uint8 is refused before anything is written.
1. *watershed*: each block is segmented together with a halo (``segment_array``
   on the block plus ``halo`` voxels on each side, clipped to the volume; each
   section on its own in ``2d`` mode and thick-section ``3d`` mode). Ids that
   occur inside the block are renumbered 1..k ("inner" ids), ids seen only in
   the halo k+1.. . The inner labels are written as one uint32 chunk of a work
   array and, for each face shared with a neighbouring block, the labels of
   the *face slab* (``w`` voxels on either side of the face, ``w =
   min(MATCH_WIDTH, halo, both block sizes)``) are saved. Done-marker per
   block, after the data.
2. *merge*: on each face the two blocks have both labelled the same slab (each
   its own half exactly, the other half from its halo), so their segments can
   be matched by overlap: inner segments ``a`` of one block and ``b`` of the
   other are joined when, in each half of the slab, their overlap is more than
   ``MATCH_FRACTION`` of ``a``'s or of ``b``'s voxels there (``match_slabs``).
   Connected components of all joins give the global segments, numbered 1..K
   in block order (then local id order). Thick-section ``3d`` mode then runs a
   *link* pass (see below). The mapping is written atomically; its presence
   marks the pass done.
3. *relabel*: each block's local ids are mapped to global ids and written as
   one uint64 chunk of the output, then marked done. When every block is done
   the work folder is removed.

Affinities (segmentation kind ``"affinities"``, module ``affinities``) are
read like ``3d`` mode: each block plus a halo in z, y and x (an int halo ``h``
is ``max(2, ceil(h / anisotropy))`` slices along z), faces matched along all
three axes. The mutex watershed (``method="mws"``) segments each block region
with ``segment_affinities`` and is stitched as above. Agglomeration is not
local (a merge outside a block's crop changes the face statistics inside it),
so ``method="agglomeration"`` agglomerates one graph of the whole volume
(``job.agglomerates_globally``, module ``graph``):

1. pass 1 writes the in-memory *fragments* (``affinities.fragments``) of each
   block plus halo, keeping the inner ones, and where their seeds start;
2. pass 2 joins fragments cut by a face by overlap (``match_slabs``) and
   numbers them in raster order of their seeds, as in-memory (written
   atomically, ``fragments.npz``); an *edges* pass writes per block the
   region adjacency graph of the voxel pairs whose first voxel lies in the
   block (the pairs inside it and, one voxel layer into the next blocks,
   those across its end faces: each face counted once) with the statistics
   of in-memory agglomeration (pair counts, sums and histograms of ``1 -
   affinity``) and the fragments' sizes (``edges/<block>.npz``, done when
   present); the graphs and sizes are summed and agglomerated once by
   ``agglomerate_affinity_graph`` (the in-memory function), giving the
   local -> global mapping;
3. relabel as above.

When the blocks' crops make the fragments of the whole volume (a halo of
about a cell diameter; smoothed boundaries, ``sigma`` > 0, avoid plateaus
whose flooding order depends on the crop) the result equals in-memory
``segment_affinities`` exactly (with the mean statistic up to float64
rounding of the summed totals). Measured on degraded SNEMI3D ground-truth
affinities (15 x 512 x 512, 256 px blocks, shipped snemi3d parameters;
BENCHMARKS.md "Affinity volumes, block-wise vs in-memory"): see there for the
adapted Rand error against in-memory segmentation at each halo. The graph
(fragments and their faces, not voxels) must fit in the memory of the process
that runs ``segment_volume``. The settings record ``input_kind``
(``"membrane"`` or ``"affinities"``, so an output is never resumed from the
other kind of input) and, for global agglomeration, ``"agglomeration":
"global"`` (outputs of versions that agglomerated each block are not resumed).

In ``2d`` mode with blocks spanning whole slices there are no faces to merge
and the result is the in-memory ``segment(..., mode="2d")`` partition exactly.
``3d`` mode with thick sections (``anisotropy >= ANISOTROPIC``, e.g. ISBI)
segments sections on their own and links them by overlap; block-wise runs
sum the footprints and overlaps of the per-section segments over blocks in a
link pass (after the face merge), so the links are exactly those of
``link_sections`` on the whole volume. Blocks that cut slices agree with
in-memory segmentation up to a small adapted Rand error that shrinks with the
halo, as does ``3d`` mode on near-isotropic data (a 3D watershed per block
with a z halo; tested on synthetic data only). Measured with the shipped
model's maps of ISBI slices 20-24 and its tuned parameters: on an 8 x 1024 x
1024 mirror-tiled volume with 256-512 px blocks and the default halo 64,
adapted Rand error 0 (identical partitions) in 2d and in 3d, no seam splits;
on the 5 x 512 x 512 slices with 128 px blocks (2d), 0.018 at halo 16, 0.007
at halo 32 and 0 at halo 64. Keep the halo at least about a cell diameter
(``tests/test_segment_volume.py``, ``benchmarks/bench_segment_volume.py``).

How blocks are segmented is decided once, by ``job.segmentation_kind``:
``"2d"``, ``"linked"`` (3d mode with thick sections), ``"3d"`` or
``"affinities"``.

Modules: ``run`` (``segment_volume``: checks, passes, summary), ``job`` (the
input and segmentation kinds, ``SegmentJob``), ``geometry`` (halos, faces,
face slabs), ``membrane`` and ``affinities`` (each input's reading, checks
and per-region segmentation), ``blocks`` (pass 1), ``stitch`` (passes 2 and
3), ``graph`` (global agglomeration of affinity fragments), ``store`` (label
arrays, settings), ``diagnostics`` (``seam_splits``).
The executors are ``fusionnet_tf.volumes.executors``, shared with
``predict-volume``.

Layout of ``OUTPUT`` (a zarr array at the store root, chunks = blocks)::

    OUTPUT/.fusionnet-done/<block>.json          relabel pass markers
    OUTPUT/.fusionnet-segment/labels.zarr        pass 1 local ids (+ markers)
    OUTPUT/.fusionnet-segment/faces/<block>.npz  pass 1 face slabs
    OUTPUT/.fusionnet-segment/mapping.npy        pass 2 local -> global ids
    OUTPUT/.fusionnet-segment/fragments.npz      global agglomeration: fragment ids
    OUTPUT/.fusionnet-segment/edges/<block>.npz  global agglomeration: block graphs
"""

from fusionnet_tf.segmentation.blockwise.diagnostics import seam_splits
from fusionnet_tf.segmentation.blockwise.geometry import DEFAULT_HALO
from fusionnet_tf.segmentation.blockwise.job import (AFFINITIES, DEFAULT_BLOCK, INPUT_KINDS,
                                                     KINDS, MEMBRANE, SegmentJob,
                                                     segmentation_kind)
from fusionnet_tf.segmentation.blockwise.run import format_summary, segment_volume
from fusionnet_tf.segmentation.blockwise.stitch import match_slabs
from fusionnet_tf.segmentation.blockwise.store import create_label_array

__all__ = ["segment_volume", "format_summary", "seam_splits", "match_slabs", "create_label_array",
           "segmentation_kind", "SegmentJob", "DEFAULT_BLOCK", "DEFAULT_HALO", "INPUT_KINDS",
           "KINDS", "MEMBRANE", "AFFINITIES"]
