"""The ``edgekit`` command line: a thin layer over the Python API (see :mod:`edgekit.cli.main`)."""
