"""The torch references (installed as ``segvol_rt.export.reference``): the
official-style zoom-out-zoom-in on the PyTorch model (:mod:`.official`), the
benchmark's model (:mod:`.bench_model`) and the benchmark's torch side
(:mod:`.bench`). Not part of the export core: they reach the runtime and the
benchmark layer, which the core never imports."""
