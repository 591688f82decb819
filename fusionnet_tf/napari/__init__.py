"""napari plugin: predict membranes, segment neurons and score them in the viewer.

Declared to napari by ``napari.yaml`` (an npe2 manifest, plugin name
``fusionnet-tf``) through the ``napari.manifest`` entry point; install it
with ``pip install -e ".[napari]"`` and open Plugins > fusionnet-tf
(or ``python -m fusionnet_tf.napari [FILES]``, which opens it).

- ``predict.PredictWidget``: "Predict membranes", an image layer -> a
  membrane probability layer, with progress and cancel; with a 3D affinity
  model (``snemi3d``), a (Z, Y, X) layer -> affinity and boundary layers
  (``affinities``); the model runs in ``engine``'s worker process, so
  TensorFlow never loads in the viewer's process (its LLVM would clash with
  Mesa's OpenGL driver's);
- ``segment.SegmentWidget``: "Segment neurons", a probability layer -> a
  labels layer (``fusionnet segment``), an affinity layer -> 3D neurons
  (agglomeration or mutex watershed), in a worker thread;
- ``evaluate.EvaluateWidget``: "Evaluate", the ISBI 2012 and segmentation
  scores of ``fusionnet evaluate`` in a table;
- ``sample.isbi2012_sample``: the shipped ISBI 2012 example slices;
- ``hdf5``: reader and writer for HDF5 datasets (``file.h5:/key``),
  affinities included; ``affinities.get_zarr_reader``: affinity zarr stores;
- ``settings``: the widgets remember their last settings.

Nothing here is imported by ``import fusionnet_tf`` or the ``fusionnet``
command line; the submodules import napari, magicgui and Qt when napari
loads them.
"""
