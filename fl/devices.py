"""Heterogeneous federations: device classes with their own skeleton ratio and speed.

FedSkel's point is a federation of unequal devices: a slow device trains a smaller skeleton so that it
does not hold up the round. A class is ``ratio:share[:slowdown]`` (``--ratios 0.1:0.3:4,0.3:0.4:2,1.0:0.3``):
that share of the clients runs an artifact compiled at that ratio on a device ``slowdown`` times slower than
this machine. A round lasts as long as its slowest client: its measured local-step seconds times its
class's slowdown (the device-speed model; the numbers of a run do not depend on it, only its wall times).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class DeviceClass:
    ratio: float
    share: float
    slowdown: float = 1.0

    def __post_init__(self):
        if not 0 < self.ratio <= 1:
            raise ValueError(f"device class ratio must be in (0, 1], got {self.ratio}")
        if not 0 < self.share <= 1:
            raise ValueError(f"device class share must be in (0, 1], got {self.share}")
        if not (math.isfinite(self.slowdown) and self.slowdown >= 1):
            raise ValueError(f"device class slowdown must be a finite number >= 1 (1: this machine's speed), got {self.slowdown}")

    @property
    def label(self) -> str:
        return f"r={self.ratio:g} x{self.slowdown:g}"


def parse_device_classes(text: str) -> tuple[DeviceClass, ...]:
    """``ratio:share[:slowdown],...`` whose shares sum to 1; ValueError naming the bad part."""
    classes = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"device class {part!r}: expected ratio:share or ratio:share:slowdown")
        try:
            classes.append(DeviceClass(*(float(f) for f in fields)))
        except ValueError as err:
            raise ValueError(f"device class {part!r}: {err}") from None
    total = sum(c.share for c in classes)
    if abs(total - 1) > 1e-6:
        raise ValueError(f"device class shares sum to {total:g}, not 1")
    return tuple(classes)


def assign_classes(classes: Sequence[DeviceClass], num_clients: int) -> list[int]:
    """Each client's class index: counts by largest remainder (every class gets its share of clients, rounded),
    in contiguous blocks of client ids (partitions already place classes of data at random)."""
    exact = [c.share * num_clients for c in classes]
    counts = [math.floor(e) for e in exact]
    for index in sorted(range(len(classes)), key=lambda i: (counts[i] - exact[i], i))[: num_clients - sum(counts)]:
        counts[index] += 1
    if 0 in counts:
        empty = [classes[i].label for i, n in enumerate(counts) if n == 0]
        raise ValueError(f"{num_clients} clients leave device classes {empty} without a client")
    return [index for index, count in enumerate(counts) for _ in range(count)]


def round_wall_seconds(client_seconds: dict[int, float], slowdowns: Sequence[float] | None = None) -> float:
    """How long a round lasts on the modelled devices: its slowest client's local training (slowdowns by client
    id; None: the devices are the ones measured, as on Flower)."""
    return max((seconds * (1.0 if slowdowns is None else slowdowns[cid]) for cid, seconds in client_seconds.items()), default=0.0)
