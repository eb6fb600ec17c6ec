"""The ``l2`` criterion: Euclidean norm of the weights."""

from __future__ import annotations

from hamnet.compress.pruning.criteria.base import MagnitudeCriterion


class L2(MagnitudeCriterion):
    """L2 weight magnitude."""

    name = "l2"
    p = 2


PLUGIN = L2
