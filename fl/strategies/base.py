"""The contract every strategy follows, and the parts they all share.

Strategies differ only in which parameters (or rows) travel; the averaging is
fl/aggregation.py and the client-side merge is the same overwrite for all.
Up and down carry the same selection, so a strategy defines just `select`, over the
parameters it shares: the ones a run's ``local`` spec (ModelLayout.personal_params) keeps
on the client never travel, whatever the strategy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterable

import numpy as np

from fedskel.fl.aggregation import AggregationRules, aggregate
from fedskel.fl.layout import ModelLayout, Params, Skeleton
from fedskel.fl.update import Entry, Update


class Strategy(ABC):
    name: ClassVar[str]
    # whether its clients train with skeleton backward (SetSkel / UpdateSkel) instead of full backward
    trains_skeleton: ClassVar[bool] = False
    # the personal parameters when a run does not say ("none", "head", "conv" or names)
    default_local: ClassVar[str] = "none"

    def __init__(self, layout: ModelLayout, local: str | None = None):
        self.layout = layout
        self.local = self.default_local if local is None else local
        self.local_params = layout.personal_params(self.local)
        self.shared_names = tuple(n for n in layout.names if n not in self.local_params)
        if not self.shared_names:
            raise ValueError(f"{self.name}: local {self.local!r} keeps every parameter on the client; nothing would be shared")

    @abstractmethod
    def select(self, params: Params, skeleton: Skeleton | None) -> dict[str, Entry]:
        """The entries of ``self.shared_names`` that travel for a client with this skeleton (None: none known yet)."""

    def client_update(self, params: Params, skeleton: Skeleton | None, num_examples: int) -> Update:
        """What a client uploads after local training."""
        self.layout.validate_params(params)
        return Update(self.select(params, skeleton), num_examples)

    def aggregate(self, global_params: Params, updates: list[Update], rules: AggregationRules | None = None) -> dict[str, np.ndarray]:
        """New global parameters from this round's uploads, under the run's aggregation rules (default: the mean)."""
        self.layout.validate_params(global_params)
        return aggregate(global_params, updates, rules)

    def server_message(self, global_params: Params, skeleton: Skeleton | None) -> Update:
        """What the server sends a client, given that client's last known skeleton."""
        self.layout.validate_params(global_params)
        return Update(self.select(global_params, skeleton), num_examples=0)

    def client_apply(self, local_params: Params, message: Update) -> dict[str, np.ndarray]:
        """Overwrite what the message carries; everything else stays local."""
        self.layout.validate_params(local_params)
        merged = {name: np.array(value, dtype=np.float32) for name, value in local_params.items()}
        for name, entry in message.entries.items():
            if name not in merged:
                raise ValueError(f"message carries unknown parameter {name!r}")
            if entry.shape != merged[name].shape:
                raise ValueError(f"message carries {name!r} as shape {entry.shape}, local is {merged[name].shape}")
            if entry.rows is None:
                merged[name] = entry.values.copy()
            else:
                merged[name][entry.rows] = entry.values
        return merged

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, local={self.local!r})"


def whole(params: Params, names: Iterable[str]) -> dict[str, Entry]:
    """Whole-tensor entries for the given parameters."""
    return {name: Entry(params[name]) for name in names}
