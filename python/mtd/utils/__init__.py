"""Small shared helpers: atomic file writes, seeding, progress bars, device choice."""
from .atomic import atomic_write
from .device import pick_device
from .progress import progress_bar
from .seeding import get_rng_state, seed_everything, set_rng_state

__all__ = ["atomic_write", "pick_device", "progress_bar", "get_rng_state", "seed_everything", "set_rng_state"]
