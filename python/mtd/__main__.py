"""``python -m mtd ...``: the ``mtd`` command (what ``torchrun -m mtd ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
