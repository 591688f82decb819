"""What a ``segment_volume`` run is: the kind of input, the kind of segmentation, the job.

``segmentation_kind`` is the one place that decides how blocks are
segmented (from the input kind, the mode and the anisotropy); the passes ask
``SegmentJob.kind``.
"""

import dataclasses
from pathlib import Path

from fusionnet_tf.segmentation.params import ANISOTROPIC

WORK_DIR = ".fusionnet-segment"
# what the input holds (recorded in the output's settings; stores of earlier versions,
# which do not record it, were segmented from membrane maps)
MEMBRANE, AFFINITIES = "membrane", "affinities"
INPUT_KINDS = (MEMBRANE, AFFINITIES)
# how blocks are segmented (``segmentation_kind``)
KINDS = ("2d", "linked", "3d", AFFINITIES)
# the kinds segmented in 3D: blocks get a z halo and are matched across z faces too
KINDS_3D = ("3d", AFFINITIES)
# default blocks: membrane maps slice by slice; affinities in 3D (their z halo is
# halo / anisotropy slices on each side, so thin blocks would mostly read halo)
DEFAULT_BLOCK = {MEMBRANE: (1, 1024, 1024), AFFINITIES: (16, 512, 512)}


def input_kind_of(input_spec):
    """``"affinities"`` for an affinity file (by its metadata), else ``"membrane"``."""
    from fusionnet_tf.data.affinity_io import affinity_metadata

    return AFFINITIES if affinity_metadata(input_spec) is not None else MEMBRANE


def agglomerates_globally(kind, params):
    """True when blocks make fragments and one graph of the volume is agglomerated.

    That is affinity agglomeration (``kind == "affinities"``, method
    ``"agglomeration"``): its merges are not local (a merge outside a block
    changes the face statistics inside), so blocks only compute fragments and
    their faces, and ``blockwise.graph`` agglomerates the fragments of the
    whole volume at once. The mutex watershed segments each block (plus halo)
    and is stitched by overlap like membrane maps.
    """
    return kind == AFFINITIES and params.method == "agglomeration"


def segmentation_kind(input_kind, mode, params):
    """How the blocks of a run are segmented: ``"2d"``, ``"linked"``, ``"3d"`` or ``"affinities"``.

    - ``"affinities"``: affinity input (``input_kind == "affinities"``; the
      mode is not used), segmented in 3D by ``segment_affinities``;
    - ``"2d"``: a membrane map in ``mode="2d"``, each section on its own;
    - ``"linked"``: 3d mode with thick sections (``params.anisotropy >=
      ANISOTROPIC``): ``segment`` then segments each section on its own and
      links segments of neighbouring sections by overlap (``link_sections``),
      which block-wise runs do exactly, as a pass of their own;
    - ``"3d"``: 3d mode otherwise, a 3D watershed per block.

    Args:
        input_kind: ``"membrane"`` or ``"affinities"``.
        mode: ``"2d"`` or ``"3d"`` (checked by the caller).
        params: ``SegmentParams`` (membrane maps; its ``anisotropy`` is read)
            or ``AffinityParams``.

    Returns:
        str, one of ``KINDS``.
    """
    if input_kind == AFFINITIES:
        return AFFINITIES
    if mode == "2d":
        return "2d"
    return "linked" if params.anisotropy >= ANISOTROPIC else "3d"


@dataclasses.dataclass(frozen=True)
class SegmentJob:
    """What every block task of a ``segment_volume`` run shares (picklable).

    Attributes:
        input_spec: str, ``volume.zarr[:/key]`` or ``volume.h5:/key``.
        output_path: str, the output zarr store.
        params: ``SegmentParams`` (membrane maps) or ``AffinityParams``.
        mode: ``"2d"`` or ``"3d"`` (always ``"3d"`` for affinities).
        halo: ``(z, y, x)`` voxels read around each block.
        volume_shape, block_shape: ``(Z, Y, X)`` tuples.
        input_kind: ``"membrane"`` ((Z, Y, X) map) or ``"affinities"``
            ((C, Z, Y, X) with ``offsets``).
        offsets: tuple of C ``(dz, dy, dx)`` for affinities, else None.
    """

    input_spec: str
    output_path: str
    params: object
    mode: str
    halo: tuple
    volume_shape: tuple
    block_shape: tuple
    input_kind: str = MEMBRANE
    offsets: tuple = None

    @property
    def work(self):
        """The work folder inside the output store."""
        return Path(self.output_path) / WORK_DIR

    @property
    def local_labels(self):
        """The pass-1 zarr array of per-block local ids."""
        return self.work / "labels.zarr"

    @property
    def mapping(self):
        """The pass-2 mapping file (local ids of all blocks -> global ids)."""
        return self.work / "mapping.npy"

    @property
    def kind(self):
        """How blocks are segmented (``segmentation_kind``): 2d, linked, 3d or affinities."""
        return segmentation_kind(self.input_kind, self.mode, self.params)

    @property
    def global_graph(self):
        """Blocks make fragments; one graph of the volume is agglomerated (see ``graph``)."""
        return agglomerates_globally(self.kind, self.params)

    @property
    def fragments(self):
        """Global agglomeration: local ids of all blocks -> fragment ids 1..F (``graph``)."""
        return self.work / "fragments.npz"

    def edges_file(self, block):
        """Global agglomeration: ``block``'s fragment faces and sizes (``graph.edges_task``)."""
        return self.work / "edges" / f"{block.name}.npz"

    @property
    def mapping_2d(self):
        """Linked mode: the mapping of local ids to per-section global ids."""
        return self.work / "mapping2d.npy"

    def faces_file(self, block):
        """The pass-1 face slabs of ``block``."""
        return self.work / "faces" / f"{block.name}.npz"
