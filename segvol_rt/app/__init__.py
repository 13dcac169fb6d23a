"""The app layer: the ``segvol-rt`` command (typer, thin), the ``infer``, ``demo``
and ``bench`` flows behind it, and console reporting. The only layer that
imports typer; nothing below it imports this package."""
