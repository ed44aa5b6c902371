"""Mergeable values: the state every swarmguard structure is made of."""

from .moments import InsufficientDataError, Moments, combine_groups

__all__ = ["Moments", "InsufficientDataError", "combine_groups"]
