"""Sweeps: grid expansion, one run directory per cell, sweep.csv, skipping finished cells."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import tiny_config

from diversefl.config import ConfigError
from diversefl.experiments.sweep import expand, format_duration, pace_text, run_sweep


def _grid(**sweep) -> dict:
    raw = tiny_config(rounds=10, attack={"name": "none", "f": 1})
    raw["sweep"] = sweep
    return raw


def test_expand_labels_params_and_overrides():
    cells = expand(
        _grid(
            aggregators=[
                "mean",
                {
                    "label": "dfl-big",
                    "name": "diversefl",
                    "eps2": 3.0,
                    "set": {"clients.sample": 0.5},
                },
            ],
            attacks=["none", {"name": "gaussian", "sigma": 5.0}],
            seeds=[0, 1],
        )
    )
    assert len(cells) == 8
    c = next(c for c in cells if c.aggregator == "dfl-big" and c.attack == "gaussian")
    assert c.config.aggregator.params() == {"eps2": 3.0}
    assert c.config.attack.params() == {"sigma": 5.0} and c.config.attack.f == 1
    assert c.config.clients.sample == 0.5
    assert c.dirname == "dfl-big__gaussian__seed0"  # the first of the two seeds' cells


def test_base_placement_and_assumed_f_apply_to_every_cell():
    """The base [attack]'s placement keys and the base [aggregator]'s assumed_f describe the
    federation, so every cell keeps them; the method settings of the base tables do not
    carry over (each cell's come from its entries), and an entry's own `set` still wins."""
    raw = _grid(
        aggregators=["mean", {"name": "median", "set": {"attack.byzantine_seed": 7}}],
        attacks=["none", {"name": "gaussian", "sigma": 5.0}],
    )
    raw["attack"] = {"name": "gaussian", "sigma": 99.0, "f": 1, "byzantine_seed": 3}
    raw["aggregator"] = {"name": "trimmed_mean", "beta": 0.2, "assumed_f": 2}
    cells = expand(raw)
    assert len(cells) == 4
    for c in cells:
        assert c.config.attack.f == 1 and c.config.aggregator.assumed_f == 2
        assert c.config.attack.byzantine_seed == (7 if c.aggregator == "median" else 3)
        assert c.config.aggregator.params() == {}  # no beta from the base table
        assert c.config.attack.params() == ({"sigma": 5.0} if c.attack == "gaussian" else {})


def test_without_a_list_the_base_table_is_the_one_entry():
    """A grid that lists no aggregators (or attacks) runs the base config's, settings included."""
    raw = _grid(seeds=[0, 1])
    raw["aggregator"] = {"name": "trimmed_mean", "beta": 0.2, "assumed_f": 1}
    raw["attack"] = {"name": "gaussian", "sigma": 5.0, "f": 1}
    cells = expand(raw)
    assert [c.dirname for c in cells] == [
        "trimmed_mean__gaussian__seed0",
        "trimmed_mean__gaussian__seed1",
    ]
    for c in cells:
        assert c.config.aggregator.params() == {"beta": 0.2} and c.config.aggregator.assumed_f == 1
        assert c.config.attack.params() == {"sigma": 5.0} and c.config.attack.f == 1


def test_set_of_a_method_setting_that_no_cell_would_see_is_an_error(tmp_path: Path):
    import tomli_w

    from diversefl.experiments.sweep import load_sweep

    path = tmp_path / "grid.toml"
    path.write_text(tomli_w.dumps(_grid(aggregators=["mean", "diversefl"], attacks=["none"])))
    with pytest.raises(ConfigError, match=r"--set aggregator.eps1: .* set 'eps1' in the entries"):
        load_sweep(path, ["aggregator.eps1=0.3"])
    with pytest.raises(ConfigError, match=r"--set attack.name: "):
        load_sweep(path, ["attack.name=gaussian"])
    cells = load_sweep(path, ["attack.byzantine_seed=4", "aggregator.assumed_f=0", "rounds=3"])
    assert all(c.config.attack.byzantine_seed == 4 for c in cells)
    assert all(c.config.aggregator.assumed_f == 0 and c.config.rounds == 3 for c in cells)


def test_bad_cell_fails_up_front():
    with pytest.raises(ConfigError, match="sweep cell bulyan__sign_flip"):
        expand(_grid(aggregators=["bulyan"], attacks=["sign_flip"]))
    with pytest.raises(ConfigError, match="sweep.grid"):
        expand(_grid(grid=[1]))


def test_aggregator_entry_can_limit_its_attacks():
    cells = expand(
        _grid(
            aggregators=[{"name": "oracle", "attacks": ["none"]}, "mean"],
            attacks=["none", "sign_flip", {"label": "g", "name": "gaussian", "sigma": 5.0}],
            seeds=[0, 1],
        )
    )
    names = [c.dirname for c in cells]
    assert names == [
        "oracle__none__seed0", "oracle__none__seed1",
        "mean__none__seed0", "mean__none__seed1",
        "mean__sign_flip__seed0", "mean__sign_flip__seed1",
        "mean__g__seed0", "mean__g__seed1",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="oracle's attacks name 'gaussian'.*none, sign_flip, g"):
        attacks = ["none", "sign_flip", {"label": "g", "name": "gaussian"}]
        expand(_grid(aggregators=[{"name": "oracle", "attacks": ["gaussian"]}], attacks=attacks))
    with pytest.raises(ConfigError, match="non-empty list of attack labels"):
        expand(_grid(aggregators=[{"name": "oracle", "attacks": "none"}], attacks=["none"]))
    with pytest.raises(ConfigError, match="sweep cell mean__sign_flip__seed0"):
        expand(_grid(aggregators=["mean"], attacks=[{"name": "sign_flip", "attacks": ["x"]}]))
    with pytest.raises(ConfigError, match="repeats a label"):
        expand(_grid(aggregators=[{"name": "oracle", "attacks": ["none", "none"]}]))
    with pytest.raises(ConfigError, match="sweep.attacks: duplicate labels"):
        expand(_grid(aggregators=["mean"], attacks=["none", "none"]))


def test_grid_refuses_what_would_share_or_misname_a_run_directory():
    """A repeated seed would give two cells one run directory (and one sweep.csv row twice);
    a label with the '__' separator would be read back as another defense/attack pair."""
    with pytest.raises(ConfigError, match=r"sweep.seeds: 1 is listed twice \(\[0, 1, 1\]\)"):
        expand(_grid(aggregators=["mean"], attacks=["none"], seeds=[0, 1, 1]))
    with pytest.raises(ConfigError, match="sweep.seeds: a non-empty list"):
        expand(_grid(aggregators=["mean"], attacks=["none"], seeds=[]))
    with pytest.raises(
        ConfigError, match=r"sweep.seeds: a non-empty list of integers, got \[\[0\]\]"
    ):
        expand(_grid(aggregators=["mean"], attacks=["none"], seeds=[[0]]))
    with pytest.raises(ConfigError, match="sweep.aggregators: label 'a__b' must be"):
        expand(_grid(aggregators=[{"name": "mean", "label": "a__b"}], attacks=["none"]))
    with pytest.raises(ConfigError, match="sweep.attacks: label 'x/y' must be"):
        expand(_grid(aggregators=["mean"], attacks=[{"name": "none", "label": "x/y"}]))
    cells = expand(_grid(aggregators=[{"name": "mean", "label": "a_b-c"}], attacks=["none"]))
    assert [c.dirname for c in cells] == ["a_b-c__none__seed0"]


@pytest.mark.slow
def test_oracle_runs_the_same_under_every_attack(tmp_path: Path):
    """Why the leaderboard runs OracleSGD under one attack only: it averages the honest
    clients and nothing a Byzantine client does (its data, its update, its randomness)
    reaches it. Under no attack every client is honest, so that run differs."""
    attacks = ["none", "sign_flip", {"name": "gaussian", "sigma": 5.0}, "label_flip", "alie",
               "adaptive", "min_max"]  # fmt: skip
    raw = tiny_config(rounds=12, attack={"name": "none", "f": 2})
    raw["sweep"] = {"aggregators": ["oracle", "mean"], "attacks": attacks}
    rows = run_sweep(expand(raw), tmp_path, progress=False, echo=lambda m: None)
    acc = {(r["aggregator"], r["attack"]): r["final_test_accuracy"] for r in rows}
    attacked = {v for (a, t), v in acc.items() if a == "oracle" and t != "none"}
    assert len(attacked) == 1
    assert acc[("oracle", "none")] not in attacked  # 6 clients averaged, not 4
    mean = {v for (a, t), v in acc.items() if a == "mean" and t != "none"}
    assert len(mean) > 1  # the attacks do change an undefended run of this size


def test_run_sweep_writes_csv_and_skips_done(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl"], attacks=["sign_flip"]))
    rows = run_sweep(cells, tmp_path, progress=False, echo=lambda m: None)
    assert len(rows) == 2
    with (tmp_path / "sweep.csv").open() as fh:
        saved = list(csv.DictReader(fh))
    assert [r["aggregator"] for r in saved] == ["mean", "diversefl"]
    from diversefl.engine.runner import cpu_model

    assert {r["cpu"] for r in saved} == {cpu_model()}  # the machine each run ran on
    assert float(saved[1]["mean_tpr"]) == 1.0
    messages = []
    run_sweep(cells, tmp_path, progress=False, echo=messages.append)
    assert all("done already" in m for m in messages)


def test_sweep_log_counts_this_sweeps_runs_and_time_left(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl", "median"], attacks=["none"]))
    run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["median*"])
    messages: list[str] = []
    run_sweep(cells, tmp_path, progress=False, echo=messages.append)
    done = [m for m in messages if "done already" not in m]
    assert len(done) == 2  # median was finished before: two runs in this sweep
    assert "| 1/2 this sweep, ~" in done[0] and done[0].endswith(" left")
    assert "| 2/2 this sweep, all done in " in done[1]


def test_pace_text_by_hand():
    # 3 of 12 runs in 600 s: 200 s per run, 9 left -> 1,800 s = 30 min
    assert pace_text(3, 12, 600.0) == "3/12 this sweep, ~30 min left"
    assert pace_text(1, 4, 20.0) == "1/4 this sweep, ~60 s left"
    assert pace_text(10, 100, 3600.0) == "10/100 this sweep, ~9.0 h left"
    assert pace_text(5, 5, 90.0) == "5/5 this sweep, all done in 90 s"
    assert [format_duration(s) for s in (0.4, 119, 120, 7199, 7200)] == [
        "0 s",
        "119 s",
        "2 min",
        "120 min",
        "2.0 h",
    ]


def test_only_runs_matching_cells_and_csv_keeps_grid_order(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl"], attacks=["none", "sign_flip"]))
    run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["*__sign_flip__*"])
    ran = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert ran == ["diversefl__sign_flip__seed0", "mean__sign_flip__seed0"]
    messages: list[str] = []
    run_sweep(cells, tmp_path, progress=False, echo=messages.append, only=["mean__none*"])
    # the log names only the selected cell; the csv lists every finished one
    assert len(messages) == 1 and "mean__none__seed0" in messages[0]
    messages.clear()
    run_sweep(cells, tmp_path, progress=False, echo=messages.append, only=["*__sign_flip__*"])
    assert len(messages) == 2 and all("done already" in m for m in messages)
    with (tmp_path / "sweep.csv").open() as fh:
        saved = [(r["aggregator"], r["attack"]) for r in csv.DictReader(fh)]
    assert saved == [("mean", "none"), ("mean", "sign_flip"), ("diversefl", "sign_flip")]
    with pytest.raises(ConfigError, match="--only krum"):
        run_sweep(cells, tmp_path, progress=False, echo=lambda m: None, only=["krum"])


@pytest.mark.slow
def test_parallel_jobs_give_the_same_numbers_as_serial(tmp_path: Path):
    cells = expand(_grid(aggregators=["mean", "diversefl"], attacks=["sign_flip"]))
    serial = run_sweep(cells, tmp_path / "serial", progress=False, echo=lambda m: None)
    parallel = run_sweep(cells, tmp_path / "par", progress=False, echo=lambda m: None, jobs=2)
    keys = ("aggregator", "attack", "final_test_accuracy", "mean_tpr", "mean_fpr")
    assert [{k: r[k] for k in keys} for r in parallel] == [{k: r[k] for k in keys} for r in serial]
    for cell in cells:
        a = (tmp_path / "serial" / cell.dirname / "metrics.csv").read_text().splitlines()
        b = (tmp_path / "par" / cell.dirname / "metrics.csv").read_text().splitlines()
        # identical numbers apart from the wall-clock column (last)
        assert [r.rsplit(",", 1)[0] for r in a] == [r.rsplit(",", 1)[0] for r in b]


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.slow
def test_pool_workers_end_when_the_sweep_process_is_killed(tmp_path: Path):
    """A killed `diversefl sweep --jobs 2` must not leave workers finishing cells as orphans
    (a restarted sweep would then write into the same run directory at the same time)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import tomli_w

    raw = _grid(aggregators=["mean", "diversefl"], attacks=["sign_flip"])
    raw["rounds"] = 200_000  # far longer than the test waits
    raw["eval"] = {"every": 100_000, "checkpoint_every": 100_000}
    cfg = tmp_path / "grid.toml"
    cfg.write_bytes(tomli_w.dumps(raw).encode())
    cmd = [sys.executable, "-c", "import sys; from diversefl.cli import main; sys.exit(main())"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "sweep", str(cfg), "--out", str(tmp_path / "runs"), "--jobs", "2", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = sum(1 for _ in (tmp_path / "runs").glob("*/config.toml"))
            workers = [
                p
                for p in _children(proc.pid)
                if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            ]
            if started == 2 and len(workers) == 2:
                break
            time.sleep(0.5)
        assert len(workers) == 2, "the sweep did not start its two workers in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.25)
        assert not any(_alive(p) for p in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def test_sweep_refuses_changed_or_damaged_run_dirs_before_running_anything(tmp_path: Path):
    """An interrupted cell whose grid entry changed is found when the sweep starts (naming
    the key), not after the earlier cells ran; a damaged summary.json names its file."""
    import shutil

    from diversefl.results import RunDirError

    raw = _grid(aggregators=["mean", "median"], attacks=["none"], seeds=[0])
    out = tmp_path / "grid"
    run_sweep(expand(raw), out, progress=False, echo=lambda m: None)
    # median's run becomes "interrupted" with another config than the grid now asks for
    (out / "median__none__seed0" / "summary.json").unlink()
    raw2 = _grid(aggregators=["mean", "median"], attacks=["none"], seeds=[0])
    raw2["rounds"] = 12
    shutil.rmtree(out / "mean__none__seed0")
    with pytest.raises(
        ConfigError,
        match=r"median__none__seed0 holds an unfinished run .*rounds: saved 10, grid 12",
    ):
        run_sweep(expand(raw2), out, progress=False, echo=lambda m: None)
    assert not (out / "mean__none__seed0").exists()  # nothing ran before the error
    # finished with another config: the same, with the key
    run_sweep(expand(raw), out, progress=False, echo=lambda m: None)
    with pytest.raises(
        ConfigError, match=r"finished run with a different config \(rounds: saved 10, grid 12\)"
    ):
        run_sweep(expand(raw2), out, progress=False, echo=lambda m: None)
    (out / "mean__none__seed0" / "summary.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match=r"mean__none__seed0/summary.json: not a run summary"):
        run_sweep(expand(raw), out, progress=False, echo=lambda m: None)
    with pytest.raises(ConfigError, match=r"sweep.aggregators: a non-empty list"):
        expand(_grid(aggregators=[], attacks=["none"]))


def test_cli_refuses_jobs_below_one(capsys):
    from diversefl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "nowhere.toml", "--jobs", "0"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
