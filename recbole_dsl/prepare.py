"""``python -m recbole_dsl.prepare``: the command line of :mod:`recbole_dsl.tools.prepare`."""

from recbole_dsl.tools.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
