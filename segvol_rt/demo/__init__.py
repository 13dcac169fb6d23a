"""The demo: synthetic CT phantoms (:mod:`.phantom`) and the shipped demo model
with its artifacts cache (:mod:`.model`). Not for clinical use."""
