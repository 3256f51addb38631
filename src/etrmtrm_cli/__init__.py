"""etrmtrm: ETRM vs ETRMTRM overfit-phase experiments on ARC-AGI."""

__version__ = "0.1.0"
