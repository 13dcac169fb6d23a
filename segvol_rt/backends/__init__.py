"""Inference backends: one file per engine, all with the interface of :mod:`.base`."""
