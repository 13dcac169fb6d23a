"""Demo training (installed as ``segvol_rt.export.demo_training``): the small
SegVol trained from scratch on synthetic phantoms and shipped in
``segvol_rt/assets/demo``. Not part of the export core: it reaches the
runtime's pipeline, the phantoms and the evaluation, which the core
(:mod:`segvol_rt.export.exporter` and its siblings) never imports.

- :mod:`.training`: the loop, its loss and the shipped layout (``main``);
- :mod:`.recipe`: tokenizer, architecture and init; :mod:`.cases`: the
  preprocessed phantoms; :mod:`.batches`: views and prompt rows;
  :mod:`.evaluation`: Dice through the runtime's zoom-out-zoom-in;
- :mod:`.ship`: writes the exported demo artifacts into the package.

    python -m segvol_rt.export.demo_training --seed 0 --steps 4800 --out /tmp/demo_model
    python -m segvol_rt.export.demo_training.ship
"""
