"""LG-FedAvg: local layers never leave the client; the rest is FedAvg.

Two splits, by name: ``local="conv"`` (the default) keeps every CONV weight and bias
local and shares the classifier, as the paper describes it ("local representations,
global classifier", Liang et al. 2020); ``local="head"`` keeps the classifier local and
shares the CONV layers, as its code runs (and as FedSkel's reference does).
"""

from __future__ import annotations

from fedskel.fl.layout import Params, Skeleton
from fedskel.fl.strategies import register
from fedskel.fl.strategies.base import Strategy, whole
from fedskel.fl.update import Entry


@register("lg-fedavg")
class LGFedAvg(Strategy):
    default_local = "conv"

    def select(self, params: Params, skeleton: Skeleton | None) -> dict[str, Entry]:
        """The shared layers, whole; the skeleton plays no part."""
        return whole(params, self.shared_names)
