"""``python -m segvol_rt.export.demo_training``: train the demo model (see :mod:`.training`)."""

from segvol_rt.export.demo_training.training import main

main()
