"""Triton kernels (optional). ``AVAILABLE`` is False when Triton is missing; nothing touches a GPU here."""
AVAILABLE = False
