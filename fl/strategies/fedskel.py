"""FedSkel: only each client's skeleton rows of CONV layers travel.

Non-skeleton filters never leave the client and are never overwritten by the
server: they are the personalised part, with the classifier by default (the
reference code, BUAA-CI-LAB/FedSkel on LG-FedAvg's, keeps its FC layers local; so at
r = 1 FedSkel is LG-FedAvg with a local head). Other non-CONV parameters travel whole.
Until a client has a skeleton (first round) it exchanges every shared parameter whole.
"""

from __future__ import annotations

import numpy as np

from fedskel.fl.layout import Params, Skeleton
from fedskel.fl.strategies import register
from fedskel.fl.strategies.base import Strategy, whole
from fedskel.fl.update import Entry


@register("fedskel")
class FedSkel(Strategy):
    trains_skeleton = True
    default_local = "head"

    def select(self, params: Params, skeleton: Skeleton | None) -> dict[str, Entry]:
        if skeleton is None:
            return whole(params, self.shared_names)
        skeleton = self.layout.validate_any_size_skeleton(skeleton)  # clients of other ratios have other k
        entries: dict[str, Entry] = {}
        for name in self.shared_names:
            conv = self.layout.conv_of(name)
            if conv is None:
                entries[name] = Entry(params[name])
            else:
                rows = skeleton[conv.weight]
                entries[name] = Entry(np.asarray(params[name])[rows], rows, self.layout.shape(name))
        return entries
