"""Benchmark building blocks, numpy only: timing (:mod:`.timing`), the report
(:mod:`.report`), machine facts (:mod:`.machine`), synthetic scans
(:mod:`.scans`) and the stage measurements (:mod:`.stages`). The torch side
lives in :mod:`segvol_rt.export.reference.bench_model` and :mod:`segvol_rt.export.reference.bench`."""
