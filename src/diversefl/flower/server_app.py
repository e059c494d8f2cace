"""The Flower ServerApp: runs a diversefl TOML config as a Flower federation.

Run config (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run --run-config``):

``config-path``
    The diversefl TOML to run (empty: the built-in digits demo with 23 clients).
``overrides``
    ``;``-separated ``section.key=value`` settings, e.g. ``"rounds=5;clients.n=4"``.
``data-dir``
    The dataset directory (empty: ``$DIVERSEFL_DATA``; digits needs none).
``out``
    The run directory (empty: ``runs/flower-<name>-<time>`` under the working directory).
``adversary``
    ``"config"`` (the TOML's ``[attack]`` assigns Byzantine roles) or ``"nodes"`` (each
    SuperNode's node config declares its own attack).
``timeout``
    Seconds to wait for one round's replies (and for the one-time samples); a node that does
    not answer in time is dropped for that round.
``overwrite``
    Replace an existing run directory.
``max-inflight``
    At most this many messages outstanding at once (0: all at once); a small machine running
    many SuperNodes needs a limit (``deploy_local`` sets one).
``min-nodes``
    The fewest usable nodes: the run refuses to start with fewer valid samples and stops in
    a round with fewer valid updates (0: a majority of ``clients.n``). Read when present;
    ``flwr run --run-config`` accepts it only once ``[tool.flwr.app.config]`` lists it.
``node-partitions``
    ``"NODE_ID:J,NODE_ID:J,..."``: which registered node holds which partition (the ids that
    ``flwr supernode register`` prints). Set, a node outside it or claiming another
    partition is excluded; empty (the default): a node's claim is taken, and a second claim
    on a partition (whenever it arrives) excludes every claimant.
``round-grace``
    Seconds a training round still waits once ``min-nodes`` replies are in (0, the default:
    until every node answered or ``timeout``): a node that stays connected but never
    answers then costs each round this grace instead of the whole ``timeout``.
``resume``
    Continue the run in ``out`` from its last checkpoint (after a stopped or crashed server):
    the nodes upload their samples again; the model and the rule's state come from the
    checkpoint.
``test-set``
    The server's test set: ``"federated"`` (the default when the nodes hold their own files:
    each evaluates on its held-out rows), or empty (the default otherwise), the dataset's
    test split from ``data-dir``
    (MNIST / Fashion-MNIST: only the ``t10k`` files; none there: no evaluation, said in a
    WARNING); a path to an ``.npz`` file with ``x`` and ``y``; ``"none"``: no evaluation.
    The server reads no training data either way.
``verify-samples``
    ``true``: hold every uploaded sample to a server-side copy of the public dataset (its
    partition's seeded draw, exactly), for benchmark federations; the server then loads and
    partitions the training set. ``false`` (the default): samples are checked for
    plausibility only (shapes, dtypes, classes, sizes consistent with the config).
``require-approval``
    ``true``: after the sample stage the server writes the uploaded samples to
    ``RUN_DIR/samples`` and waits until ``diversefl samples RUN_DIR --approve`` (optionally
    ``--reject J``) approves exactly those samples; rejected partitions are excluded.
    ``false`` (the default): it writes them and trains at once.
``node-auth``
    ``true``: the SuperNodes are authenticated, and ``node-partitions`` must bind every
    node id to its partition (the run refuses to start without it).
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from diversefl.flower.common import RunSettings
from diversefl.flower.strategy import DiverseFLStrategy

app = ServerApp()


def default_out(name: str) -> Path:
    """``runs/flower-<name>-<time>`` under the working directory."""
    return Path("runs") / f"flower-{name or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"


def strategy_from_settings(settings: RunSettings) -> DiverseFLStrategy:
    """The strategy the run config describes (config, run directory, server settings)."""
    cfg = settings.load_config()
    out = Path(settings.out).expanduser() if settings.out else default_out(cfg.name)
    return DiverseFLStrategy(
        cfg,
        data_dir=settings.data_dir or None,
        out=out.resolve(),
        adversary=settings.adversary,
        timeout=settings.timeout,
        overwrite=settings.overwrite,
        max_inflight=settings.max_inflight,
        min_nodes=settings.min_nodes or None,
        node_partitions=settings.partition_map(),
        round_grace=settings.round_grace,
        resume=settings.resume,
        verify_samples=settings.verify_samples,
        test_set=settings.test_set,
        node_auth=settings.node_auth,
        require_approval=settings.require_approval,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Load the config named by the run config and run it with :class:`DiverseFLStrategy`."""
    strategy_from_settings(RunSettings.from_run_config(dict(context.run_config))).start(grid)
