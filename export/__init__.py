"""Export-time code of segvol-rt (installed as ``segvol_rt.export``): the PyTorch
reimplementation of SegVol (:mod:`.model`), checkpoint loading
(:mod:`.checkpoint`) and graph export. Imports torch; the runtime never
imports this package except through the torch backend."""
