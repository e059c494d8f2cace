"""The Flower ClientApp: one diversefl client on one SuperNode.

Node config (``flower-supernode --node-config '...'``):

``partition-id``, ``num-partitions``
    Which client this node is (the simulation runtime sets both).
``data-dir``
    Where the dataset lives (else the run config's ``data-dir``, else ``$DIVERSEFL_DATA``).
``cache-dir``
    Optional: keep this node's shard there, so each message's fresh process skips loading the
    dataset.
``data-path`` (and ``test-path``)
    With ``data.dataset = "files"``: this node's own file or image folder (and, optionally,
    its separate test file); no other node's data is needed anywhere.
``worker``
    Optional: the socket of this node's :mod:`diversefl.flower.worker`, which keeps torch and
    the data loaded between messages (the ClientApp then only forwards payloads).
``attack`` (and ``attack-<setting>``, ``byzantine-rank``, ``byzantine-f``)
    Makes the node Byzantine with that registry attack, e.g. ``attack="sign_flip"`` or
    ``attack="gaussian" attack-sigma=10.0``. Without it the node is honest unless the server
    runs with ``adversary="config"`` and assigns it a role.

Messages: ``query.sample`` (once) -> the node's sample; ``train`` -> its update for the model;
``evaluate`` (federated evaluation, own files only) -> its held-out counts for the model.
This module imports neither torch nor diversefl's engine until a message needs them, so that a
node with a worker starts each message's process quickly.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

# Record keys (kept equal to diversefl.flower.common's without importing it here).
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"

app = ClientApp()


def _answer(op: str, context: Context, **payload: Any) -> dict[str, Any]:
    """Run ``op`` on this node's worker when it has one, else in this process."""
    node_config = dict(context.node_config)
    data_dir = str(context.run_config.get("data-dir", "") or "")
    worker = str(node_config.get("worker", "") or "")
    if worker:
        from diversefl.flower.worker import call

        request = {"op": op, "node_config": node_config, "data_dir": data_dir, **payload}
        return call(worker, request)
    from diversefl.flower import common

    if op == "sample":
        return common.handle_sample(payload["config"], node_config, data_dir)
    if op == "evaluate":
        return common.handle_evaluate(
            payload["config"], node_config, payload["theta"], data_dir, payload["message_config"]
        )
    return common.handle_train(
        payload["config"], node_config, payload["message_config"], payload["theta"], data_dir
    )


@app.query("sample")
def sample(message: Message, context: Context) -> Message:
    """Answer the one-time sample query with this node's s examples (and their indices)."""
    answer = _answer("sample", context, config=str(message.content[CONFIG]["config"]))
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(answer[k])) for k in ("idx", "x", "y")})
    meta = ConfigRecord(answer["meta"])
    return Message(RecordDict({ARRAYS: arrays, CONFIG: meta}), reply_to=message)


def _theta(message: Message) -> np.ndarray:
    """The model a train or evaluate message carries (its ArrayRecord's ``theta``), float32."""
    arrays = cast(ArrayRecord, message.content[ARRAYS])
    return np.asarray(arrays["theta"].numpy(), dtype=np.float32)


def _model_answer(op: str, message: Message, context: Context) -> dict[str, Any]:
    """Run ``op`` ("train" or "evaluate") for the model and settings a message carries."""
    config = message.content[CONFIG]
    message_config = {k: v for k, v in config.items() if k != "config"}
    return _answer(
        op,
        context,
        config=str(config["config"]),
        message_config=message_config,
        theta=_theta(message),
    )


@app.train()
def train(message: Message, context: Context) -> Message:
    """Answer a train message with this node's update for the received model."""
    answer = _model_answer("train", message, context)
    arrays = ArrayRecord({"theta": Array(np.ascontiguousarray(answer["update"]))})
    metrics = MetricRecord(answer["metrics"])
    return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Answer an evaluate message (federated evaluation) with this node's held-out counts."""
    answer = _model_answer("evaluate", message, context)
    return Message(RecordDict({METRICS: MetricRecord(answer["metrics"])}), reply_to=message)
