"""``python -m segvol_rt``: the ``segvol-rt`` command line."""

from segvol_rt.app.entry import main

if __name__ == "__main__":
    main()
