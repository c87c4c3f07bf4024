"""Sub-commands of the ``mtd`` command line (see :mod:`mtd.cli`)."""
