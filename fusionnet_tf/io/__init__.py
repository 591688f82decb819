"""Input/output shared by every stage (the I/O layer of issue 24).

``spec``: ``parse_spec(text) -> Spec(path, key, kind)``, the one rule that
splits ``file.h5:/key``, ``store.zarr/key``, ``X.TIF``, ... for every command,
reader and writer. ``files``: TIFF/HDF5/zarr read and write helpers (atomic
writes). ``outputs``: the output guards (``check_output_path``,
``check_not_input``, ``check_hdf5_target``) and ``atomic_path``.
``ome_zarr``: OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3) images, probability
maps, affinities and image-labels with multiscale pyramids. Importing this
package imports nothing heavy; h5py, tifffile, zarr, dask and ``ome_zarr`` load
on first use.
"""
