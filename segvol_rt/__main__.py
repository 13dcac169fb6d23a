"""``python -m segvol_rt``: the ``segvol-rt`` command line."""

from .cli import main

if __name__ == "__main__":
    main()
