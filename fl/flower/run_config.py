"""The Flower app's run config: the simulator's Settings plus what only a Flower run needs.

Flower configs hold only bool / int / float / str and every key a user may override must have a
default in pyproject's [tool.flwr.app.config]; so an option that may be unset (None) is the empty
string there, and `reselect-every` takes "once" as the CLI does. The same key names travel in each
round's ConfigRecord, so the server's settings reach every client through one parser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from flwr.app import ConfigRecord

from fedskel.fl.aggregation import AggregationRules
from fedskel.fl.simulator import Settings

UNSET = ""
ONCE = "once"


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"run config {key!r} must be an integer, got {value!r}")
    return int(value)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"run config {key!r} must be a number, got {value!r}")
    return float(value)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"run config {key!r} must be a string, got {value!r}")
    return value


def _rounds_or_once(key: str, value: Any) -> int | None:
    return None if value == ONCE else _integer(key, value)


# run config key -> (Settings field, parser); client_timeout has no key: Flower's round-timeout replaces it
_SETTINGS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "strategy": ("strategy", _text),
    "local": ("local", _text),
    "num-server-rounds": ("rounds", _integer),
    "fraction-train": ("fraction", _number),
    "local-steps": ("local_steps", _integer),
    "local-epochs": ("local_epochs", _number),
    "lr": ("lr", _number),
    "momentum": ("momentum", _number),
    "weight-decay": ("weight_decay", _number),
    "setskel-steps": ("setskel_steps", _integer),
    "reselect-every": ("reselect_every", _rounds_or_once),
    "wire-dtype": ("wire_dtype", _text),
    "seed": ("seed", _integer),
}

# run config key -> (AggregationRules field, parser): Settings.aggregation, the server's bounds on each client
_AGGREGATION: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "aggregation": ("rule", _text),
    "trim": ("trim", _number),
    "max-examples": ("max_examples", _integer),
    "max-share": ("max_share", _number),
    "clip-norm": ("clip_norm", _number),
}

# fields whose value may be None, written "" in configs
_UNSETTABLE = {"local", "local_steps", "local_epochs", "momentum", "weight_decay", "data_dir", "alpha", "out", "max_examples", "max_share", "clip_norm"}


def _parse(key: str, value: Any, parse: Callable[[str, Any], Any], unsettable: bool) -> Any:
    return None if unsettable and value == UNSET else parse(key, value)


def settings_from_config(config: Mapping[str, Any]) -> Settings:
    """Settings from run-config keys (missing ones keep Settings' defaults); local-epochs, when set, wins over local-steps."""
    values = {field: _parse(key, config[key], parse, field in _UNSETTABLE) for key, (field, parse) in _SETTINGS.items() if key in config}
    if values.get("local_epochs") is not None:
        values["local_steps"] = None
    rules = {field: _parse(key, config[key], parse, field in _UNSETTABLE) for key, (field, parse) in _AGGREGATION.items() if key in config}
    return Settings(**values, aggregation=AggregationRules(**rules))


def settings_record(settings: Settings) -> ConfigRecord:
    """The settings as a round's ConfigRecord (what configure_train sends every client)."""
    record = {}
    for key, (field, _) in _SETTINGS.items():
        value = getattr(settings, field)
        record[key] = (ONCE if field == "reselect_every" else UNSET) if value is None else value
    for key, (field, _) in _AGGREGATION.items():
        value = getattr(settings.aggregation, field)
        record[key] = UNSET if value is None else value
    return ConfigRecord(record)


# run config key -> (AppConfig field, parser)
_APP: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "artifact": ("artifact", _text),
    "dataset": ("dataset", _text),
    "data-dir": ("data_dir", _text),
    "partition": ("partition", _text),
    "alpha": ("alpha", _number),
    "round-timeout": ("round_timeout", _number),
    "min-nodes": ("min_nodes", _integer),
    "out": ("out", _text),
}


@dataclass(frozen=True)
class AppConfig:
    """One Flower run. `artifact`: the compiled model's path on each machine (never inside the app bundle,
    which Flower caps at 10 MB); a SuperNode's node config `artifact` overrides it for that device.
    `round_timeout`: seconds the server waits for a round's replies; a node that misses it is left out.
    `min_nodes`: nodes to wait for before round 1. `out`: run directory for report.json (None: none).
    """

    settings: Settings
    artifact: str = UNSET
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "shards"
    alpha: float | None = None
    round_timeout: float = 600.0
    min_nodes: int = 2
    out: str | None = None

    def __post_init__(self):
        if not self.artifact:
            raise ValueError("run config 'artifact' is empty: give the path of a compiled model (fedskel-compile)")
        if not self.round_timeout > 0:
            raise ValueError(f"run config 'round-timeout' must be > 0 seconds, got {self.round_timeout}")
        if self.min_nodes < 1:
            raise ValueError(f"run config 'min-nodes' must be >= 1, got {self.min_nodes}")

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> AppConfig:
        """Parse and check a run config; an unknown key is an error (a typo must not pass as a default)."""
        unknown = sorted(set(config) - set(_SETTINGS) - set(_AGGREGATION) - set(_APP))
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; known: {sorted({*_SETTINGS, *_AGGREGATION, *_APP})}")
        fields = {field: _parse(key, config[key], parse, field in _UNSETTABLE) for key, (field, parse) in _APP.items() if key in config}
        return cls(settings=settings_from_config(config), **fields)

    def for_node(self, node_config: Mapping[str, Any]) -> AppConfig:
        """This config as a SuperNode sees it: its node config may name its own artifact."""
        artifact = node_config.get("artifact", UNSET)
        return replace(self, artifact=_text("artifact", artifact)) if artifact != UNSET else self

    @property
    def partition_options(self) -> dict[str, float]:
        return {} if self.alpha is None else {"alpha": self.alpha}
