"""What this CPU's OpenVINO offers, for the tests that need bf16 (Python and C++ alike)."""

from __future__ import annotations


def bf16_problem() -> str | None:
    """Why bf16 cannot run here (OpenVINO lists no BF16 in the CPU's
    OPTIMIZATION_CAPABILITIES: no AMX, AVX512-BF16 or AVX2-VNNI-2; or openvino is not
    installed), or None: the backend's own refusal line
    (:func:`segvol_rt.backends.openvino.precision_problem`)."""
    from segvol_rt.backends.openvino import precision_problem

    return precision_problem("bf16")
