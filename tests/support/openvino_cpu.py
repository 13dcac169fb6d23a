"""What this CPU's OpenVINO offers, for the tests that need bf16 (Python and C++ alike)."""

from __future__ import annotations


def bf16_problem() -> str | None:
    """Why bf16 cannot run here (OpenVINO lists no BF16 in the CPU's
    OPTIMIZATION_CAPABILITIES: no AMX, AVX512-BF16 or AVX2-VNNI-2), or None."""
    import openvino as ov

    offered = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    return None if "BF16" in offered else f"this CPU's OpenVINO offers no BF16 ({', '.join(offered)})"
