"""FedAvg: the whole model (less any personal layers a run names) travels both ways; the baseline for communication."""

from __future__ import annotations

from fedskel.fl.layout import Params, Skeleton
from fedskel.fl.strategies import register
from fedskel.fl.strategies.base import Strategy, whole
from fedskel.fl.update import Entry


@register("fedavg")
class FedAvg(Strategy):
    def select(self, params: Params, skeleton: Skeleton | None) -> dict[str, Entry]:
        """Every shared parameter, whatever the skeleton: FedAvg ignores it."""
        return whole(params, self.shared_names)
