"""``diversefl sweep --pack K``: group a sweep's cells into packs of runs that share their
batches (:func:`~diversefl.engine.packed.pack_key`) and run each pack in one process, its
members' rounds in lockstep (:class:`~diversefl.engine.packed.PackedFederation`)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diversefl.cell_lock import CellLock
from diversefl.engine.packed import PACK_MAX_PARAMS, PackedFederation, pack_key
from diversefl.engine.resume import read_resume_point
from diversefl.engine.runner import ModelDivergedError, RunLoop
from diversefl.experiments.cells import (
    Cell,
    CellResult,
    _run_cell,
    check_setup,
    claim_cell,
)
from diversefl.results import check_run_dir, prepare_run_dir

# Most runs ``--pack auto`` puts in one pack. Per run of the paper's softmax grid (1,000 rounds,
# one thread), packs of 16 cost 4.2 s, of 27-28 4.4-4.6 s (the pack's gradients outgrow the
# cache), of 5-7 5.4-7.4 s, against 14-23 s alone.
AUTO_PACK = 16


@dataclass(frozen=True)
class Pack:
    """Cells run together; ``start`` is the round their checkpoints reached (0: fresh)."""

    cells: tuple[Cell, ...]
    start: int = 0


def plan_packs(
    cells: list[Cell], out: Path, size: int | str, data_dir: str | None = None
) -> list[Pack]:
    """Split ``cells`` into packs of at most ``size`` (``"auto"``: every packable run of a
    model under :data:`PACK_MAX_PARAMS` parameters, at most :data:`AUTO_PACK` per pack and the
    packs of one group as equal as possible, so that ``--jobs`` workers finish together). Cells
    that cannot be packed, or share their batches with no other cell, become packs of one (run
    as alone)."""
    limit = AUTO_PACK if size == "auto" else int(size)
    if limit < 1:
        raise ValueError(f"--pack: a pack holds at least one run, got {size}")
    groups: dict[tuple[Any, ...], list[Cell]] = defaultdict(list)
    sizes: dict[tuple[Any, ...], int] = {}
    singles: list[Pack] = []
    for cell in cells:
        key = pack_key(cell.config)
        if key is None or (size == "auto" and _params(cell, sizes, data_dir) > PACK_MAX_PARAMS):
            singles.append(Pack((cell,)))
            continue
        groups[(key, _checkpoint_round(cell, out / cell.dirname))].append(cell)
    packs = []
    for (_, start), members in groups.items():
        for part in _split(members, limit, balanced=size == "auto"):
            packs.append(Pack(tuple(part), start))
    return packs + singles


def _split(members: list[Cell], limit: int, balanced: bool) -> list[list[Cell]]:
    """``members`` in order, in chunks of ``limit`` (the last one shorter), or ``balanced``:
    in as few chunks as ``limit`` allows, their sizes differing by one at most (55 runs under a
    limit of 16: 14, 14, 14 and 13, not 16, 16, 16 and 7)."""
    if not balanced:
        return [members[i : i + limit] for i in range(0, len(members), limit)]
    k = -(-len(members) // limit)
    base, extra = divmod(len(members), k)
    out, i = [], 0
    for j in range(k):
        size = base + (j < extra)
        out.append(members[i : i + size])
        i += size
    return out


def _params(cell: Cell, sizes: dict[tuple[Any, ...], int], data_dir: str | None) -> int:
    """The parameter count of the cell's model (built once per dataset and model)."""
    from diversefl.engine.inputs import build_module, load_data

    cfg = cell.config
    key = (repr(cfg.data.model_dump(mode="json")), repr(cfg.model.model_dump(mode="json")))
    if key not in sizes:
        module = build_module(cfg, load_data(cfg, data_dir).dataset)
        sizes[key] = sum(p.numel() for p in module.parameters())
    return sizes[key]


def _checkpoint_round(cell: Cell, run_dir: Path) -> int:
    """The round a cell's checkpoint reached (0 without one)."""
    if not (run_dir / "checkpoint.pt").exists():
        return 0
    return int(read_resume_point(cell.config, run_dir).saved["round"])


def run_pack(
    pack: Pack, out: Path, data_dir: str | None = None, threads: int = 0
) -> list[CellResult | BaseException]:
    """Run (or resume) the pack's cells into ``out/<cell>``, under each cell's lock; one
    result per cell: its :class:`CellResult`, or the error that stopped it (a cell whose
    model diverges leaves the pack; the others go on). A pack of one runs alone."""
    import torch

    if len(pack.cells) == 1:  # alone, exactly as without --pack
        cell = pack.cells[0]
        try:
            return [_run_cell(cell, out / cell.dirname, data_dir, False, threads)]
        except ModelDivergedError as err:
            return [err]
    if threads > 0:
        torch.set_num_threads(threads)
    check_setup(list(pack.cells), data_dir)
    results: dict[int, CellResult | BaseException] = {}
    locks: dict[int, CellLock] = {}
    try:
        todo = _claim(pack, out, locks, results)
        if todo:
            _run_claimed(todo, out, data_dir, results)
    finally:
        for lock in locks.values():
            lock.release()
    return [results[i] for i in range(len(pack.cells))]


def _claim(
    pack: Pack, out: Path, locks: dict[int, CellLock], results: dict[int, Any]
) -> list[tuple[int, Cell]]:
    """Lock each cell's directory; cells running or finished elsewhere get their result."""
    todo = []
    for i, cell in enumerate(pack.cells):
        lock = claim_cell(cell, out / cell.dirname)
        if isinstance(lock, CellResult):
            results[i] = lock
            continue
        locks[i] = lock
        todo.append((i, cell))
    return todo


def _run_claimed(
    todo: list[tuple[int, Cell]], out: Path, data_dir: str | None, results: dict[int, Any]
) -> None:
    """Build the pack of the claimed cells and run their rounds in lockstep."""
    fed = PackedFederation([cell.config for _, cell in todo], data_dir)
    loops: list[tuple[int, RunLoop]] = []
    try:
        for (i, cell), member in zip(todo, fed.members, strict=True):
            run_dir = out / cell.dirname
            resume = check_run_dir(run_dir, resume=True, overwrite=False)
            prepare_run_dir(run_dir, resume=resume, overwrite=not resume)
            (run_dir / ".running").touch()
            (run_dir / "summary.json").unlink(missing_ok=True)
            loops.append((i, RunLoop.open(cell.config, run_dir, resume=resume, progress=False,
                                          sim=member)))  # fmt: skip
        starts = {loop.state.round for _, loop in loops}
        if len(starts) != 1:
            raise RuntimeError(f"the pack's checkpoints are at different rounds {sorted(starts)}")
        t0 = time.perf_counter()
        _lockstep(fed, loops, results)
        share = (time.perf_counter() - t0) / len(loops)
        for i, loop in loops:
            if i in results:
                continue
            loop.close()
            results[i] = CellResult(_finish(loop, len(loops), share))
            (out / todo_dir(todo, i) / ".running").unlink(missing_ok=True)
    finally:
        for _, loop in loops:
            loop.close()


def todo_dir(todo: list[tuple[int, Cell]], i: int) -> str:
    """The run folder name of claimed cell ``i``."""
    return next(cell.dirname for j, cell in todo if j == i)


def _lockstep(
    fed: PackedFederation, loops: list[tuple[int, RunLoop]], results: dict[int, Any]
) -> None:
    """Every round: the pack's shared gradients, each member's step, then each one's
    bookkeeping (so the evaluation, too, is one pass for all)."""
    first = loops[0][1]
    for r in first.pending():
        fed.begin_round(r)
        recs = []
        for i, loop in loops:
            if i in results:
                continue
            try:
                recs.append((i, loop, loop.step(r)))
            except ModelDivergedError as err:
                results[i] = err
                loop.sim.active = False  # type: ignore[attr-defined]
                loop.close()
        for _, loop, rec in recs:
            loop.record(r, rec)


def _finish(loop: RunLoop, size: int, share: float) -> dict[str, Any]:
    """The member's summary, with the pack's size and its share of the pack's wall time."""
    return loop.finish(extra={"pack_size": size, "wall_seconds": round(share, 3)}).summary
