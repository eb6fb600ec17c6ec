"""The ``l1`` criterion: sum of absolute weights."""

from __future__ import annotations

from hamnet.compress.pruning.criteria.base import MagnitudeCriterion


class L1(MagnitudeCriterion):
    """L1 weight magnitude."""

    name = "l1"
    p = 1


PLUGIN = L1
