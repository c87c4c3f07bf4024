"""mtd — mixed tensor decomposition of CNNs."""
