"""Strategies by name, so configs and CLIs can pick one with a string."""

from __future__ import annotations

from typing import Any, Callable

from fedskel.fl.layout import ModelLayout
from fedskel.fl.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a Strategy subclass available as `name`."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered by {_REGISTRY[name].__name__}")
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"strategy {name!r} must be a Strategy subclass, got {cls!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def get_strategy_class(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; available: {available()}")
    return _REGISTRY[name]


def get_strategy(name: str, layout: ModelLayout, **options: Any) -> Strategy:
    """Instantiate a registered strategy for this model; options go to its constructor."""
    return get_strategy_class(name)(layout, **options)


def available() -> list[str]:
    return sorted(_REGISTRY)


# Importing the modules registers their strategies.
from fedskel.fl.strategies import fedavg, fedskel, lg_fedavg  # noqa: E402, F401
