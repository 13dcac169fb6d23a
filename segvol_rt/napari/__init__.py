"""segvol-rt in napari (the ``napari`` extra): a dock widget to open a scan,
prompt SegVol with a target name, points and a box, and see each result as a
Labels layer; registered with napari through the npe2 manifest ``napari.yaml``.

* :mod:`segvol_rt.napari.prompts` - napari layer data <-> scan space, numpy only;
* :mod:`segvol_rt.napari.session` - the widget's model, Qt-free: one scan, one
  model (a local :class:`~segvol_rt.runtime.SegVolRuntime` or a
  ``segvol-rt serve`` server), the results per target and the writers;
* :mod:`segvol_rt.napari.widget` - the Qt widget (napari, qtpy).

Importing this package loads neither napari nor Qt. It sits above
:mod:`segvol_rt.app` (it reuses the CLI's reading and writing, so a saved
mask is the file ``segvol-rt infer`` would write) and nothing imports it.
"""
