"""Mergeable values: the state every swarmguard structure is made of."""

from .exact_sum import ExactSum, ExactSumOverflowError, exact_group_sums
from .moments import InsufficientDataError, Moments, combine_groups

__all__ = [
    "Moments",
    "InsufficientDataError",
    "combine_groups",
    "ExactSum",
    "ExactSumOverflowError",
    "exact_group_sums",
]
