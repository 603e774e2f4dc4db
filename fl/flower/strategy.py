"""Our strategies (fl.strategies) as a Flower strategy: Flower's round loop and transport, our arithmetic.

Flower's own strategies send every node the same dense model and average equal-shaped arrays; FedSkel
needs a different download per node (its skeleton rows) and a per-row average of partial uploads. So
configure_train encodes each node's `server_message` with fl.wire, aggregate_train decodes every reply
(fl.wire validates; a failed or bad reply is dropped with a logged reason, never aggregated) and calls
the strategy's `aggregate`: the simulator's code, one implementation of the arithmetic.

Each round leaves a record shaped like the simulator's (bytes are wire-message lengths, counted the
same way), so fl.report summarises Flower runs too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from logging import INFO, WARNING
from typing import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy as FlowerStrategyBase
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedskel.fl.flower.records import CONFIG, GLOBAL, UPDATE, ReplyError, arrays_from_record, params_record, wire_record
from fedskel.fl.flower.replies import Evaluation, Upload, read_evaluation, read_upload
from fedskel.fl.layout import Skeleton
from fedskel.fl.simulator import Settings
from fedskel.fl.strategies.base import Strategy, whole
from fedskel.fl.update import Update
from fedskel.fl.devices import round_wall_seconds
from fedskel.fl.wire import encode, whole_model_size
from fedskel.runtime.client import PHASES


class FlowerStrategy(FlowerStrategyBase):
    """Drives one of our strategies over a Flower Grid; `rounds` / `result()` keep what happened.

    Nodes are known by Flower node id (a restarted node is a new one); reports name clients by the
    partition id each reply states. `min_nodes`: nodes to wait for before round 1; later rounds sample
    from whoever is connected, so a lost node never blocks the run.
    """

    def __init__(self, strategy: Strategy, settings: Settings, min_nodes: int = 1):
        if settings.strategy != strategy.name:
            raise ValueError(f"settings name strategy {settings.strategy!r}, the strategy given is {strategy.name!r}")
        self.strategy = strategy
        self.layout = strategy.layout
        self.settings = settings
        self.min_nodes = min_nodes
        self.skeletons: dict[int, Skeleton | None] = {}  # node id -> skeleton of its last good upload
        self.num_partitions = 0
        self.clients: dict[int, dict] = {}  # partition id -> what its replies said about its data
        self.rounds: list[dict] = []
        self.timings: list[dict] = []
        self._sampler = np.random.default_rng(settings.seed)
        self._global: dict[str, np.ndarray] = {}
        self._sent: dict[int, Message] = {}
        self._silent: set[int] = set()  # nodes that missed this round's training deadline

    def summary(self) -> None:
        log(INFO, "\t├──> FedSkel strategy %r, wire %s, fraction-train %.2f", self.strategy.name, self.settings.wire_dtype, self.settings.fraction)
        log(INFO, "\t└──> waits for %d node(s) before round 1", self.min_nodes)

    # ---- training -----------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Each sampled node gets the round's settings and its own download (whole model until it has a skeleton)."""
        self._global = arrays_from_record(arrays)
        nodes = self._sample(grid, server_round)
        round_config = ConfigRecord({**config, "server-round": server_round})
        self._sent, downlink = {}, 0
        for node in nodes:
            data = encode(self.strategy.server_message(self._global, self.skeletons.get(node)), self.settings.wire_dtype)
            downlink += len(data)
            content = RecordDict({CONFIG: round_config, UPDATE: wire_record(data)})
            self._sent[node] = Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
        self.rounds.append({"round": server_round, "sampled_nodes": nodes, "downlink_bytes": downlink})
        self.timings.append({"started": time.perf_counter()})
        return list(self._sent.values())

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's aggregate over the good replies, in partition order (the simulator's client order)."""
        replies = list(replies)
        uploads: dict[int, tuple[int, Upload]] = {}  # partition id -> (node, its upload)
        dropped = []
        for node, reply in self._match(replies):
            try:
                upload = self._pinned(self._known(read_upload(_content(reply), self.layout), uploads))
            except Exception as err:  # noqa: BLE001  whatever one reply does wrong drops that node, never the run
                dropped.append({"node": node, "reason": _reason(err)})
            else:
                uploads[upload.partition] = (node, upload)
                self.clients.setdefault(upload.partition, {})["train"] = upload.update.num_examples
        self._silent = set(self._unanswered(replies))
        dropped += [{"node": node, "reason": "no reply within the round timeout"} for node in sorted(self._silent)]
        for drop in dropped:
            log(WARNING, "round %d: dropped node %s: %s", server_round, drop["node"], drop["reason"])
        nodes, uploads = [uploads[p][0] for p in sorted(uploads)], [uploads[p][1] for p in sorted(uploads)]
        record = self.rounds[-1]
        record.update(
            accepted=[u.partition for u in uploads],
            dropped=dropped,
            client_loss={u.partition: u.loss for u in uploads},
            loss=float(np.mean([u.loss for u in uploads])) if uploads else None,
            uploads={u.partition: u.size for u in uploads},
            uplink_bytes=sum(u.size for u in uploads),
        )
        self.timings[-1]["step_ms"] = {phase: [ms for u in uploads for ms in u.step_ms[phase]] for phase in PHASES}
        self.timings[-1]["device_seconds"] = round_wall_seconds({u.partition: sum(map(sum, u.step_ms.values())) / 1e3 for u in uploads})
        metrics = MetricRecord({"accepted": len(uploads), "dropped": len(dropped), "uplink-bytes": record["uplink_bytes"], "downlink-bytes": record["downlink_bytes"]})
        if not uploads:  # a round where every node failed leaves the global model as it was
            return None, metrics
        metrics["loss"] = record["loss"]
        new_global = self.strategy.aggregate(self._global, [u.update for u in uploads], self.settings.aggregation)
        for node, upload in zip(nodes, uploads):  # only now: a skeleton counts once its upload was aggregated
            self.skeletons[node] = upload.skeleton
        return params_record(new_global), metrics

    # ---- evaluation ---------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Every connected node (the simulator measures every client): its download and the whole global model.

        A node silent through this round's training is probably gone (the SuperLink lists it until its
        heartbeat expires, about a minute): it is not asked, so a lost node costs one timeout per round,
        not two. Evaluation traffic is kept apart (`evaluate_downlink_bytes`), as in the simulator where it is none.
        """
        self._global = arrays_from_record(arrays)
        global_data = encode(Update(whole(self._global, self.layout.names), num_examples=0), "float32")
        global_record = wire_record(global_data)
        round_config = ConfigRecord({**config, "server-round": server_round})
        self._sent, downlink = {}, 0
        for node in sorted(set(grid.get_node_ids()) - self._silent):
            data = encode(self.strategy.server_message(self._global, self.skeletons.get(node)), self.settings.wire_dtype)
            downlink += len(data) + len(global_data)
            content = RecordDict({CONFIG: round_config, UPDATE: wire_record(data), GLOBAL: global_record})
            self._sent[node] = Message(content, dst_node_id=node, message_type=MessageType.EVALUATE)
        self.rounds[-1]["evaluate_downlink_bytes"] = downlink
        return list(self._sent.values())

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Mean personalised accuracy over the nodes, and the global model's accuracy on their pooled test splits."""
        local, correct, tested, seen = {}, 0, 0, {}
        for node, reply in self._match(replies):
            try:
                evaluation = self._known(read_evaluation(_content(reply)), seen)
            except Exception as err:  # noqa: BLE001  as in training: one bad reply never ends the run
                log(WARNING, "round %d: evaluation of node %s left out: %s", server_round, node, _reason(err))
                continue
            seen[evaluation.partition] = node
            self.clients.setdefault(evaluation.partition, {})["test"] = evaluation.test_examples
            if evaluation.test_examples:
                local[evaluation.partition] = evaluation.local_accuracy
                correct, tested = correct + evaluation.global_correct, tested + evaluation.test_examples
        record = self.rounds[-1]
        record.update(
            local_accuracy=local,
            mean_local_accuracy=float(np.mean([local[p] for p in sorted(local)])) if local else None,
            global_accuracy=correct / tested if tested else None,
        )
        timing = self.timings[-1]
        timing["seconds"] = time.perf_counter() - timing.pop("started")
        log(INFO, "round %d: %d/%d updates aggregated, uplink %d B, downlink %d B, mean local accuracy %s, global accuracy %s",
            server_round, len(record["accepted"]), len(record["sampled_nodes"]), record["uplink_bytes"], record["downlink_bytes"],
            record["mean_local_accuracy"], record["global_accuracy"])
        values = {"mean-local-accuracy": record["mean_local_accuracy"], "global-accuracy": record["global_accuracy"]}
        return MetricRecord({k: v for k, v in values.items() if v is not None}) or None

    # ---- the run's record ---------------------------------------------------------------------
    def result(self) -> dict:
        """What the simulator returns, in its shape (per-client lists by partition id)."""
        rounds = []
        for record in self.rounds:
            record = dict(record)
            for key in ("client_loss", "local_accuracy", "uploads"):
                by_partition = record.get(key, {})
                record[key] = [by_partition.get(p) for p in range(self.num_partitions)]
            rounds.append(record)
        clients = [self.clients.get(p, {}) for p in range(self.num_partitions)]
        return {"settings": asdict(self.settings), "clients": clients, "rounds": rounds, "timings": self.timings,
                "whole_model_upload_bytes": whole_model_size(self.layout, self.settings.wire_dtype)}

    # ---- helpers ------------------------------------------------------------------------------
    def _sample(self, grid: Grid, server_round: int) -> list[int]:
        """fraction-train of the connected nodes (at least one), seeded; Flower's wait for the first round."""
        _, connected = sample_nodes(grid, self.min_nodes if server_round == 1 else 1, 0)
        connected = sorted(connected)
        count = max(1, round(self.settings.fraction * len(connected)))
        # by index: node ids are uint64, which numpy would turn into float64 and round
        return sorted(connected[i] for i in self._sampler.choice(len(connected), size=count, replace=False))

    def _match(self, replies: Iterable[Message]) -> list[tuple[int | None, Message]]:
        """(node the request went to, reply): an error reply comes from the SuperLink, so match by request id."""
        node_of = {message.metadata.message_id: node for node, message in self._sent.items()}
        return [(node_of.get(reply.metadata.reply_to_message_id), reply) for reply in replies]

    def _unanswered(self, replies: Iterable[Message]) -> list[int]:
        answered = {reply.metadata.reply_to_message_id for reply in replies}
        return [node for node, message in self._sent.items() if message.metadata.message_id not in answered]

    def _known(self, reply: Upload | Evaluation, answered: Mapping[int, object]) -> Upload | Evaluation:
        """The reply, if its partition fits the federation: one num-partitions for all, one reply per partition
        and round (two SuperNodes started with the same partition-id must not count twice)."""
        if self.num_partitions and reply.partitions != self.num_partitions:
            raise ReplyError(f"num-partitions {reply.partitions} differs from the {self.num_partitions} of earlier replies")
        if reply.partition in answered:
            raise ReplyError(f"partition-id {reply.partition} already replied this round")
        self.num_partitions = reply.partitions
        return reply

    def _pinned(self, upload: Upload) -> Upload:
        """The upload with num_examples no larger than its partition declared in its first accepted upload:
        a node cannot buy weight later by claiming more data (the run's max_examples caps the first claim)."""
        declared = self.clients.get(upload.partition, {}).get("train")
        if declared is None or upload.update.num_examples <= declared:
            return upload
        log(WARNING, "partition %d claims %d examples, declared %d at first contact: counted as %d",
            upload.partition, upload.update.num_examples, declared, declared)
        return replace(upload, update=Update(upload.update.entries, declared))


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, ReplyError) else f"{type(err).__name__}: {err}"


def _content(reply: Message) -> RecordDict:
    if reply.has_error():
        raise ReplyError(f"error reply, code {reply.error.code}: {reply.error.reason}")
    return reply.content
