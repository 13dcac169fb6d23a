"""The sections of benchmarks/device_check.py, one module each (see its docstring)."""
