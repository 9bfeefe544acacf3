"""``python -m recbole_dsl.analysis``: the command line of :mod:`recbole_dsl.tools.analysis`."""

from recbole_dsl.tools.analysis import main

if __name__ == "__main__":
    raise SystemExit(main())
