"""What federated learning needs to know about a compiled model.

The compiler's manifest lists every trainable parameter and every CONV layer.
FL code works from this layout alone, so it never has to load the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from fedskel.runtime.skeleton import validate_skeleton

Params = Mapping[str, np.ndarray]
Skeleton = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ConvLayer:
    """A CONV layer whose output channels (rows of axis 0) can form a skeleton."""

    weight: str
    bias: str | None
    out_channels: int
    k: int


@dataclass(frozen=True)
class ModelLayout:
    """Parameter shapes (graph order) plus the CONV layers a skeleton covers."""

    shapes: dict[str, tuple[int, ...]]
    conv_layers: tuple[ConvLayer, ...]

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ModelLayout:
        """Build and cross-check the layout, so a bad manifest fails here, not mid-round."""
        for key in ("params", "conv_layers"):
            if key not in manifest:
                raise ValueError(f"manifest has no {key!r} list")
        try:
            shapes = _param_shapes(manifest["params"])
            layers = tuple(
                ConvLayer(weight=c["weight"], bias=c.get("bias"), out_channels=int(c["out_channels"]), k=int(c["k"]))
                for c in manifest["conv_layers"]
            )
        except KeyError as err:
            raise ValueError(f"manifest entry lacks the field {err}") from None
        layout = cls(shapes=shapes, conv_layers=layers)
        layout._check_conv_layers()
        return layout

    def _check_conv_layers(self) -> None:
        """Every conv layer must point at real parameters whose shapes agree with it."""
        seen: set[str] = set()
        for conv in self.conv_layers:
            for name in (conv.weight, conv.bias):
                if name is None:
                    continue
                if name not in self.shapes:
                    raise ValueError(f"conv layer {conv.weight!r} refers to unknown parameter {name!r}")
                if name in seen:
                    raise ValueError(f"parameter {name!r} belongs to two conv layers")
                seen.add(name)
            if self.shapes[conv.weight][:1] != (conv.out_channels,):
                raise ValueError(
                    f"conv layer {conv.weight!r}: out_channels {conv.out_channels} "
                    f"!= weight shape {self.shapes[conv.weight]}"
                )
            if conv.bias is not None and self.shapes[conv.bias] != (conv.out_channels,):
                raise ValueError(
                    f"conv layer {conv.weight!r}: bias {conv.bias!r} has shape "
                    f"{self.shapes[conv.bias]}, expected ({conv.out_channels},)"
                )
            if not 1 <= conv.k <= conv.out_channels:
                raise ValueError(f"conv layer {conv.weight!r}: k={conv.k} outside [1, {conv.out_channels}]")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise KeyError(f"unknown parameter {name!r}")
        return self.shapes[name]

    def conv_of(self, name: str) -> ConvLayer | None:
        """The CONV layer owning this weight or bias; None for every other parameter."""
        for conv in self.conv_layers:
            if name in (conv.weight, conv.bias):
                return conv
        return None

    @property
    def conv_param_names(self) -> frozenset[str]:
        """Every CONV weight and bias: the only parameters sent as skeleton rows."""
        return frozenset(n for conv in self.conv_layers for n in (conv.weight, conv.bias) if n is not None)

    @property
    def head_param_names(self) -> frozenset[str]:
        """The classifier: every non-CONV parameter from the first dense (2-D) weight on, in graph order.

        CNNs end in their dense layers, so this skips the norm parameters that belong to CONV layers.
        """
        names = [n for n in self.names if n not in self.conv_param_names]
        first = next((i for i, n in enumerate(names) if len(self.shapes[n]) == 2), len(names))
        return frozenset(names[first:])

    def personal_params(self, spec: str) -> frozenset[str]:
        """The parameters that stay on the client under ``spec``: "none", "head" (the classifier), "conv"
        (every CONV weight and bias) or comma-separated parameter names."""
        groups = {"none": frozenset(), "head": self.head_param_names, "conv": self.conv_param_names}
        if spec in groups:
            if spec == "head" and not groups[spec]:
                raise ValueError("local 'head': the model has no dense (2-D) parameter after its CONV layers")
            return groups[spec]
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in self.shapes]
        if not names or unknown:
            raise ValueError(
                f"local {spec!r}: expected 'none', 'head', 'conv' or parameter names; unknown {unknown or [spec]}"
            )
        return frozenset(names)

    def validate_params(self, params: Params) -> None:
        """Reject a parameter set that is not exactly this model's (names and shapes)."""
        missing = [n for n in self.shapes if n not in params]
        unknown = [n for n in params if n not in self.shapes]
        if missing or unknown:
            raise ValueError(f"parameters do not match the layout: missing {missing}, unknown {unknown}")
        for name, shape in self.shapes.items():
            if np.shape(params[name]) != shape:
                raise ValueError(f"parameter {name!r} has shape {np.shape(params[name])}, layout says {shape}")

    def validate_skeleton(self, skeleton: Skeleton) -> dict[str, np.ndarray]:
        """Check a skeleton covers every CONV layer with k distinct in-range channels.

        The runtime's check is the one rule (a bad index would reach a compiled kernel there); this
        returns its int64 copies by layer, so later mutation of the caller's arrays cannot change it.
        """
        vectors = validate_skeleton(skeleton, [asdict(conv) for conv in self.conv_layers])
        return {conv.weight: indices for conv, indices in zip(self.conv_layers, vectors)}


    def validate_any_size_skeleton(self, skeleton: Skeleton) -> dict[str, np.ndarray]:
        """validate_skeleton for a skeleton of any size k per layer: a server meets clients of several ratios
        (the runtime checks a client's own skeleton against its compiled k)."""
        sizes = {name: int(np.size(indices)) for name, indices in skeleton.items()}
        layers = tuple(ConvLayer(c.weight, c.bias, c.out_channels, sizes.get(c.weight, c.k)) for c in self.conv_layers)
        if any(not 1 <= c.k <= c.out_channels for c in layers):
            bad = next(c for c in layers if not 1 <= c.k <= c.out_channels)
            raise ValueError(f"layer {bad.weight}: a skeleton of {bad.k} channels, the layer has {bad.out_channels}")
        return ModelLayout(self.shapes, layers).validate_skeleton(skeleton)


def _param_shapes(params: list[Mapping[str, Any]]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for param in params:
        name = param["name"]
        if name in shapes:
            raise ValueError(f"manifest lists parameter {name!r} twice")
        if param["dtype"] != "float32":
            raise ValueError(f"parameter {name!r} has dtype {param['dtype']!r}; FL supports float32 only")
        shape = tuple(int(d) for d in param["shape"])
        if any(d <= 0 for d in shape):
            raise ValueError(f"parameter {name!r} has a non-positive dimension in shape {shape}")
        shapes[name] = shape
    return shapes
