"""Packed federations: several simulated runs of small dense models stepped together, their
clients' gradients computed in one batched call per round (``diversefl sweep --pack K``).

Runs that share dataset, partition, clients, model, seed and rounds draw the same mini-batches
and shared samples every round; they differ in the rule, the attack and so in their models.
:class:`PackedFederation` builds one :class:`PackedMember` (a
:class:`~diversefl.engine.simulator.Simulation`) per run and, at the start of each round,
draws the round's batch once, lets each member's data attack relabel its own copy of the
labels, and computes every member's client gradients with
:func:`~diversefl.engine.packed_grads.packed_dense_grads`. Each member then runs the rest of
its round (attack, rule, server step) exactly as alone. The wider matmuls round differently,
so a packed run agrees with the same run alone to float rounding, not bit for bit; the same
pack gives the same numbers every time."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diversefl.attacks.base import Attack
from diversefl.config import Config
from diversefl.data.datasets import Dataset
from diversefl.engine.inputs import load_data
from diversefl.engine.packed_grads import packed_dense_grads, packed_logits
from diversefl.engine.simulator import Simulation
from diversefl.protocols import PROTOCOLS
from diversefl.round import RoundContext

# Models up to this many parameters are packed by default (`sweep --pack auto`): the softmax
# regression (7,850) gains several-fold; the 2x200 MLP (199,210) is bound by its matmuls
# already and runs slower packed (benchmarks/packed_sweep.py).
PACK_MAX_PARAMS = 50_000


class PackError(ValueError):
    """The runs cannot be packed together (they would not share their batches)."""


def pack_key(cfg: Config) -> tuple[Any, ...] | None:
    """What runs must share to be packed together, or None when ``cfg`` cannot be packed: a
    protocol (RSA keeps per-client models), an attack that changes its batches' inputs (not
    only labels), local training, chunked or vmap gradients."""
    attack_cls = _attack_class(cfg.attack.name)
    relabels_only = attack_cls.poison is Attack.poison or getattr(
        attack_cls, "poisons_labels_only", False
    )
    if (
        cfg.aggregator.name in PROTOCOLS
        or not relabels_only
        or getattr(cfg.clients, "local_steps", 1) != 1
        or getattr(cfg.clients, "local_epochs", None) is not None
        or cfg.engine.grads == "vmap"
        or cfg.engine.clients_per_chunk
    ):
        return None
    dump = cfg.model_dump(mode="json")
    return (
        repr(dump["data"]),
        repr(dump["model"]),
        repr(dump["clients"]),
        cfg.seed,
        cfg.rounds,
        cfg.eval.every,
        cfg.eval.batch,
        cfg.engine.device,
    )


def _attack_class(name: str) -> type[Attack]:
    from diversefl import attacks

    return attacks.REGISTRY[name]


class PackedFederation:
    """The members of one pack and the round's shared computation (see the module doc)."""

    def __init__(
        self, cfgs: list[Config], data_dir: str | None = None, dataset: Dataset | None = None
    ) -> None:
        if not cfgs:
            raise PackError("a pack needs at least one run")
        keys = {pack_key(cfg) for cfg in cfgs}
        if None in keys or len(keys) != 1:
            names = [cfg.name for cfg in cfgs if pack_key(cfg) is None]
            raise PackError(
                f"runs {names or [cfg.name for cfg in cfgs]} cannot be packed together: packed "
                "runs share dataset, partition, clients, model, seed and rounds, and none may "
                "be a protocol (rsa), local training or an attack that changes its inputs"
            )
        data = dataset or load_data(cfgs[0], data_dir).dataset
        self.members = [PackedMember(cfg, self, data) for cfg in cfgs]
        self.round = 0
        self._eval_round = -1
        self._evals: dict[int, dict[str, float]] = {}
        self._check_shared()

    def _check_shared(self) -> None:
        first = self.members[0]
        if not first.fm.dense:
            raise PackError("packing needs a dense model (Flatten / Linear / ReLU layers)")
        for m in self.members[1:]:
            same = (
                torch.equal(m.shards, first.shards)
                and torch.equal(m.batch_k, first.batch_k)
                and torch.equal(m.sample_idx, first.sample_idx)
                and torch.equal(m.loss_scale, first.loss_scale)
                and m.fm.dim == first.fm.dim
            )
            if not same:
                raise PackError(f"run {m.cfg.name!r} does not draw the same batches as the pack")

    @property
    def active(self) -> list[PackedMember]:
        """Members still running (one whose model diverged leaves the pack)."""
        return [m for m in self.members if m.active]

    def begin_round(self, r: int) -> None:
        """Draw round r's batch once and compute every active member's client gradients."""
        self.round = r
        members = self.active
        if not members:
            return
        first = members[0]
        x, y, w = first.batches(r, writable=False)
        labels = []
        for m in members:
            m.round_byz = Simulation.byzantine_mask(m, r)
            m.round_ctx = Simulation.context(m, r, m.round_byz)
            labels.append(m.poisoned_labels(x, y))
        coef = first.loss_scale[:, None] * w / w.sum(dim=1, keepdim=True).clamp_min(1.0)
        thetas = torch.stack([m.theta for m in members])
        grads = packed_dense_grads(first.fm, thetas, x, torch.stack(labels), coef)
        for m, g in zip(members, grads, strict=True):
            m.round_grads = g

    def evaluation(self, member: PackedMember) -> dict[str, float]:
        """``member``'s test metrics after the current round (all members' at once)."""
        if self._eval_round != self.round:
            self._evals = self._evaluate_all()
            self._eval_round = self.round
        return dict(self._evals[id(member)])

    @torch.no_grad()
    def _evaluate_all(self) -> dict[int, dict[str, float]]:
        members = self.active
        first = members[0]
        thetas = torch.stack([m.theta for m in members])
        x_test, y_test, batch = first.x_test, first.y_test, first.cfg.eval.batch
        preds, loss = [], torch.zeros(len(members), dtype=torch.float64)
        for start in range(0, x_test.shape[0], batch):
            xb, yb = x_test[start : start + batch], y_test[start : start + batch]
            logits = packed_logits(first.fm, thetas, xb)
            for k in range(len(members)):
                loss[k] += float(F.cross_entropy(logits[k], yb, reduction="sum"))
            preds.append(logits.argmax(dim=2))
        all_preds = torch.cat(preds, dim=1)
        out = {}
        for k, m in enumerate(members):
            row = {
                "test_accuracy": float((all_preds[k] == y_test).float().mean()),
                "test_loss": float(loss[k]) / x_test.shape[0],
            }
            row.update(m.attack.metrics(all_preds[k], y_test))
            out[id(m)] = row
        return out


class PackedMember(Simulation):
    """One run of a pack: a :class:`Simulation` whose round inputs (Byzantine mask, context,
    client gradients) and evaluation come from its :class:`PackedFederation`."""

    def __init__(self, cfg: Config, pack: PackedFederation, data: Dataset) -> None:
        super().__init__(cfg, dataset=data)
        self.pack = pack
        self.active = True
        self.round_byz: Tensor | None = None
        self.round_ctx: RoundContext | None = None
        self.round_grads: Tensor | None = None

    def poisoned_labels(self, x: Tensor, y: Tensor) -> Tensor:
        """This member's labels for the shared batch: its data attack relabels its Byzantine
        clients' rows (an attack that changed the inputs cannot be packed)."""
        byz, ctx = self.round_byz, self.round_ctx
        assert byz is not None and ctx is not None
        if not bool(byz.any()) or type(self.attack).poison is Attack.poison:
            return y
        byz_d = byz.to(self.device)
        xb, yb = self.attack.poison(x[byz_d], y[byz_d], ctx)
        if not torch.equal(xb, x[byz_d]):
            raise PackError(f"attack {self.cfg.attack.name!r} changes its inputs: not packable")
        labels = y.clone()
        labels[byz_d] = yb
        return labels

    def _this_round(self, r: int) -> bool:
        return self.pack.round == r and self.round_grads is not None

    def byzantine_mask(self, r: int) -> Tensor:
        if self._this_round(r):
            assert self.round_byz is not None
            return self.round_byz
        return super().byzantine_mask(r)

    def context(self, r: int, byz: Tensor) -> RoundContext:
        if self._this_round(r) and byz is self.round_byz:
            assert self.round_ctx is not None
            return self.round_ctx  # the one the data attack drew from, as alone
        return super().context(r, byz)

    def client_gradients(
        self, r: int, byz: Tensor, ctx: RoundContext, theta: Tensor | None = None,
        compute: Tensor | None = None, **kwargs: Any,
    ) -> Tensor:  # fmt: skip
        if theta is not None or kwargs or not self._this_round(r):
            return super().client_gradients(r, byz, ctx, theta=theta, compute=compute, **kwargs)
        assert self.round_grads is not None
        grads = self.round_grads.clone()
        if compute is not None:
            grads[~compute.to(grads.device)] = 0.0
        return grads

    @torch.no_grad()
    def evaluate(self, theta: Tensor | None = None) -> dict[str, float]:
        if theta is not None or not self.active:
            return super().evaluate(theta)
        return self.pack.evaluation(self)
