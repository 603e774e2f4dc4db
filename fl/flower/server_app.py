"""The Flower ServerApp: FlowerStrategy over the grid, from the artifact's initial parameters.

The server needs the artifact for the initial model and its layout only; it holds no data (global
accuracy comes from the nodes' test splits). With run config `out`, the run's record is written
as fedskel-sim writes its own (report.json, curves.png), so `fedskel-report` compares both.
"""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedskel.fl.flower.records import params_record
from fedskel.fl.flower.run_config import AppConfig, settings_record
from fedskel.fl.flower.strategy import FlowerStrategy
from fedskel.fl.layout import ModelLayout
from fedskel.fl.report import build_report, write_run
from fedskel.fl.simulator import strategy_for
from fedskel.runtime import load


def make_server_app(run_config: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp; `run_config` overrides the run's (Flower's in-process run_simulation gives none)."""
    app = ServerApp()
    overrides = dict(run_config or {})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = AppConfig.from_run_config({**context.run_config, **overrides})
        model = load(config.artifact)
        strategy = FlowerStrategy(strategy_for(config.settings, ModelLayout.from_manifest(model.manifest)), config.settings, config.min_nodes)
        round_config = settings_record(config.settings)
        strategy.start(
            grid, params_record(model.params), num_rounds=config.settings.rounds, timeout=config.round_timeout,
            train_config=round_config, evaluate_config=round_config,
        )
        if config.out:
            write_run(config.out, build_report(_description(config, model.manifest, strategy.num_partitions), strategy.result()))

    return app


def _description(config: AppConfig, manifest: Mapping[str, Any], clients: int) -> dict:
    """The report's "config": fedskel-sim's fields, plus which engine ran it."""
    return {
        "engine": "flower", "model": manifest["model"], "dataset": config.dataset, "clients": clients,
        "partition": config.partition, "alpha": config.alpha, "ratio": manifest["ratio"], "batch_size": manifest["batch_size"],
        "conv_layers": manifest["conv_layers"], "seed": config.settings.seed, "artifact": config.artifact,
    }


app = make_server_app()
