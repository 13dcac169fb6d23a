"""``segvol-rt serve``: sessions over Triton Inference Server (the ``serve`` extra).

:mod:`~segvol_rt.serve.sessions` (the session store and its bounds),
:mod:`~segvol_rt.serve.models` (the served models' handlers),
:mod:`~segvol_rt.serve.server` (Triton through PyTriton). The wire format is
:mod:`segvol_rt.wire`.
"""
