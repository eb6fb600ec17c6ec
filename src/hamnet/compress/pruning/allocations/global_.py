"""The ``global`` allocation: heads and FFN channels ranked across all layers."""

from __future__ import annotations

from hamnet.compress.pruning.allocations.base import Allocation


class Global(Allocation):
    """Heads (and, separately, FFN channels) are ranked across all layers together."""

    name = "global"
    global_ranking = True
    supports_hf = True


PLUGIN = Global
