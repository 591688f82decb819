"""Input/output formats shared by every stage (the I/O layer of issue 24, started here).

``ome_zarr``: OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3) images, probability
maps, affinities and image-labels with multiscale pyramids. Importing this
package imports nothing heavy; zarr, dask and ``ome_zarr`` load on first use.
"""
