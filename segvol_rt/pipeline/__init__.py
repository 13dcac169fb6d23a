"""The official zoom-out-zoom-in pipeline on arrays: the coordinate chain
(:mod:`.geometry`), preprocessing (:mod:`.preprocess`), prompts
(:mod:`.prompts`) and the zoom-in (:mod:`.zoom`). It drives any backend
through the :class:`~segvol_rt.pipeline.zoom.Graphs` protocol and imports none."""
