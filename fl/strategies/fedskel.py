"""FedSkel: only each client's skeleton rows of CONV layers travel.

Non-skeleton filters never leave the client and are never overwritten by the
server: they are the personalised part. Non-CONV parameters travel whole.
Until a client has a skeleton (first round) it exchanges the full model.
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

    def select(self, params: Params, skeleton: Skeleton | None) -> dict[str, Entry]:
        if skeleton is None:
            return whole(params, self.layout.names)
        skeleton = self.layout.validate_skeleton(skeleton)
        entries: dict[str, Entry] = {}
        for name in self.layout.names:
            conv = self.layout.conv_of(name)
            if conv is None:
                entries[name] = Entry(params[name])
            else:
                rows = skeleton[conv.weight]
                entries[name] = Entry(np.asarray(params[name])[rows], rows, self.layout.shape(name))
        return entries
