"""LG-FedAvg: local layers never leave the client; the rest is FedAvg.

Default local layers are every CONV weight and bias ("local representations,
global classifier", Liang et al. 2020).
"""

from __future__ import annotations

from typing import Iterable

from fedskel.fl.layout import ModelLayout, Params, Skeleton
from fedskel.fl.strategies import register
from fedskel.fl.strategies.base import Strategy, whole
from fedskel.fl.update import Entry


@register("lg-fedavg")
class LGFedAvg(Strategy):
    def __init__(self, layout: ModelLayout, local_params: Iterable[str] | None = None):
        super().__init__(layout)
        local = layout.conv_param_names if local_params is None else frozenset(local_params)
        unknown = sorted(local - set(layout.names))
        if unknown:
            raise ValueError(f"local_params names unknown parameters {unknown}")
        self.global_names = tuple(n for n in layout.names if n not in local)
        if not self.global_names:
            raise ValueError("every parameter is local: lg-fedavg would share nothing")
        self.local_params = local

    def select(self, params: Params, skeleton: Skeleton | None) -> dict[str, Entry]:
        """The global layers, whole; the skeleton plays no part."""
        return whole(params, self.global_names)
