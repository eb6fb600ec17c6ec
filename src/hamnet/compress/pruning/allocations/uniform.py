"""The ``uniform`` allocation: every layer loses the same fraction."""

from __future__ import annotations

from hamnet.compress.pruning.allocations.base import Allocation


class Uniform(Allocation):
    """Every layer loses the same fraction of its heads and FFN channels."""

    name = "uniform"
    supports_hf = True


PLUGIN = Uniform
