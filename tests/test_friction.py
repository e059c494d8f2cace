"""The friction a new user hit (issue 32): comparing runs in one plot, config.toml with every
default, resume hints that name the real folder, sweep --status after --rounds, the
deploy-local hint, the Python API's progress and run folder, honest sweep estimates and demo
seconds, and log lines that are not hard-wrapped."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import tomli_w
from conftest import tiny_config

import diversefl
import diversefl.api
from diversefl.cli import main
from diversefl.config import load_config, make_config, to_toml_dict


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


def _write_config(path: Path, raw: dict) -> str:
    path.write_text(tomli_w.dumps(raw))
    return str(path)


# -- 1. plot of several run directories --------------------------------------------------------
def _fake_run(d: Path, aggregator: str, attack: str, acc: list[float], seed: int = 0) -> Path:
    d.mkdir(parents=True)
    rows = "".join(f"{10 * (i + 1)},{a},0.1\n" for i, a in enumerate(acc))
    (d / "metrics.csv").write_text("round,test_accuracy,test_loss\n" + rows)
    summary = {"aggregator": aggregator, "attack": attack, "seed": seed, "name": ""}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_plot_of_several_run_directories_draws_one_line_per_run(tmp_path: Path, capsys):
    from diversefl.plots import compare_series

    a = _fake_run(tmp_path / "one" / "a", "mean", "sign_flip", [0.5, 0.25])
    b = _fake_run(tmp_path / "two" / "b", "diversefl", "sign_flip", [0.75, 0.875])
    lines = compare_series([a, b])
    assert [(ln.label, ln.rounds, ln.values) for ln in lines] == [
        ("a (Mean, Sign flip)", [10, 20], [0.5, 0.25]),
        ("b (DiverseFL, Sign flip)", [10, 20], [0.75, 0.875]),
    ]
    png = tmp_path / "both.png"
    assert main(["plot", str(a), str(b), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and f"wrote {png}" in capsys.readouterr().out
    assert main(["plot", str(a), "--out", str(tmp_path / "a.png")]) == 0  # one run: as before


def test_plot_of_several_names_seeds_and_refuses_what_is_no_run(tmp_path: Path, capsys):
    from diversefl.plots import compare_series

    a = _fake_run(tmp_path / "x" / "run", "mean", "none", [0.5], seed=0)
    b = _fake_run(tmp_path / "y" / "run", "mean", "none", [0.5], seed=1)
    labels = [ln.label for ln in compare_series([a, b])]
    assert labels == [f"{a} (Mean, No attack, seed 0)", f"{b} (Mean, No attack, seed 1)"]
    assert main(["plot", str(a), str(tmp_path / "x")]) == 2
    assert "is not a run directory (no metrics.csv)" in _err(capsys)
    assert main(["plot", str(a), str(b), "--table"]) == 2
    assert "--table reads one sweep's or run's directory" in _err(capsys)


# -- 2. config.toml holds every setting ---------------------------------------------------------
GAUSS = tiny_config(
    rounds=20,
    attack={"name": "gaussian", "f": 1},
    aggregator={"name": "diversefl"},
    eval={"every": 5, "checkpoint_every": 10},
)


def test_config_toml_writes_the_rule_and_attack_settings_with_their_defaults(tmp_path: Path):
    diversefl.run({**GAUSS, "rounds": 2}, out=tmp_path / "r", progress=False)
    saved = tomllib.loads((tmp_path / "r" / "config.toml").read_text())
    assert saved["attack"]["sigma"] == 1e4
    assert {k: saved["aggregator"][k] for k in ("eps1", "eps2", "min_cosine", "quarantine")} == {
        "eps1": 0.5,
        "eps2": 2.0,
        "min_cosine": 0.0,
        "quarantine": 0.0,
    }
    # the old form (settings left out), the new one and the dict: one config, as the Flower
    # strategy's and the sweep's comparisons see it
    old = tmp_path / "old.toml"
    short = {**GAUSS, "rounds": 2}
    old.write_text(tomli_w.dumps(to_toml_dict(make_config(short), defaults=False)))
    assert "sigma" not in old.read_text()
    new = load_config(tmp_path / "r" / "config.toml")
    assert to_toml_dict(load_config(old)) == to_toml_dict(new) == to_toml_dict(make_config(short))


def _write_the_old_way(run_dir: Path, raw: dict) -> None:
    """config.toml and the checkpoint's config record as written before this change."""
    from diversefl.engine.resume import config_fingerprint
    from diversefl.results import load_checkpoint, save_checkpoint

    old = to_toml_dict(make_config(raw), defaults=False)
    (run_dir / "config.toml").write_text(tomli_w.dumps(old))
    state = load_checkpoint(run_dir / "checkpoint.pt")
    state.update(config=old, config_sha256=config_fingerprint(old))
    save_checkpoint(run_dir / "checkpoint.pt", state)


def _accuracies(run_dir: Path) -> list[tuple[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return [(r["round"], r["test_accuracy"]) for r in rows]


def test_a_run_written_before_every_default_was_still_resumes(tmp_path: Path, capsys):
    whole = tmp_path / "whole"
    diversefl.run(GAUSS, out=whole, progress=False)
    for how in ("cli", "api"):
        half = tmp_path / how
        diversefl.run({**GAUSS, "rounds": 10}, out=half, progress=False)
        _write_the_old_way(half, {**GAUSS, "rounds": 10})
        if how == "cli":  # the saved (old-form) config.toml drives the resume
            assert main(["run", "--out", str(half), "--resume", "--rounds", "20", "--quiet"]) == 0
        else:  # the config given again, compared with the old-form config.toml and checkpoint
            diversefl.run(GAUSS, out=half, resume=True, progress=False)
        assert _accuracies(half) == _accuracies(whole), how
        assert "sigma = 10000.0" in (half / "config.toml").read_text()  # rewritten in full


def test_a_sweep_cell_written_the_old_way_matches_its_grid(tmp_path: Path):
    from diversefl.experiments.sweep import config_difference, expand

    (cell,) = expand({**GAUSS, "sweep": {"seeds": [0]}})
    (tmp_path / "cell").mkdir()
    old = to_toml_dict(cell.config, defaults=False)
    (tmp_path / "cell" / "config.toml").write_text(tomli_w.dumps(old))
    assert config_difference(cell, tmp_path / "cell") == ""
    changed = {**old, "aggregator": {"name": "diversefl", "eps2": 3.0}}
    (tmp_path / "cell" / "config.toml").write_text(tomli_w.dumps(changed))
    assert config_difference(cell, tmp_path / "cell") == "aggregator.eps2: saved 3.0, grid 2.0"


def test_a_resume_refusal_names_the_setting_not_every_default(tmp_path: Path):
    from diversefl.config_diff import setting_differences

    dfl = to_toml_dict(make_config(GAUSS))
    median = to_toml_dict(make_config({**GAUSS, "aggregator": {"name": "median"}, "seed": 3}))
    assert setting_differences(median, dfl) == [
        "aggregator.name: checkpoint 'median', now 'diversefl'",
        "seed: checkpoint 3, now 0",
    ]


# -- 3. Ctrl-C names the real folder; 4. --resume on a folder without a run ---------------------
def test_ctrl_c_names_the_real_run_folder(tmp_path: Path, capsys, monkeypatch):
    cfg = _write_config(tmp_path / "c.toml", tiny_config(rounds=2))
    out = tmp_path / "my run"

    def interrupted_after_a_checkpoint(*args, **kwargs):
        out.mkdir()
        (out / "config.toml").write_text("")
        (out / "checkpoint.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(diversefl.api, "run", interrupted_after_a_checkpoint)
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 130
    err = _err(capsys)
    assert f"`diversefl run --out '{out}' --resume`" in err and "RUN_DIR" not in err

    def interrupted_at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diversefl.api, "run", interrupted_at_once)
    assert main(["run", cfg, "--out", str(tmp_path / "never"), "--quiet"]) == 130
    assert "interrupted: nothing was written yet; run the same command again" in _err(capsys)


def test_resume_without_a_run_says_so_and_what_is_there(tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "--out", str(empty), "--resume"]) == 2
    assert f"error: --resume: there is no run in {empty} to resume (it is empty)" in _err(capsys)
    assert main(["run", "--out", str(tmp_path / "nowhere"), "--resume"]) == 2
    assert "(it does not exist)" in _err(capsys)
    demo = tmp_path / "demo"
    for agg in ("mean", "diversefl"):
        (demo / agg).mkdir(parents=True)
        (demo / agg / "config.toml").write_text("")
    assert main(["run", "--out", str(demo), "--resume"]) == 2
    err = _err(capsys)
    assert "no run in" in err and "the run directories diversefl, mean: resume one of" in err
    assert "config file not found" not in err


# -- 5. sweep --status after a sweep with --rounds ----------------------------------------------
def test_resume_of_a_finished_run_says_nothing_was_trained(tmp_path: Path, capsys):
    """`run --resume` on a finished run returns it as saved and says so, instead of a line that
    reads as if it had just trained; with a larger --rounds it trains and says that."""
    out = tmp_path / "done"
    cfg = _write_config(tmp_path / "c.toml", {**GAUSS, "rounds": 3})
    assert main(["run", cfg, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"{out} holds a finished run of 3 rounds (nothing to resume" in text
    assert main(["run", "--out", str(out), "--resume", "--rounds", "4", "--quiet"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "final test accuracy" in text and "nothing to resume" not in text


def test_sweep_status_applies_the_overrides_the_sweep_ran_with(tmp_path: Path, capsys):
    raw = {**tiny_config(rounds=30), "sweep": {"aggregators": ["mean"], "attacks": ["none"]}}
    grid, out = _write_config(tmp_path / "grid.toml", raw), tmp_path / "sweep"
    assert main(["sweep", grid, "--out", str(out), "--rounds", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sweep", grid, "--out", str(out), "--status"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "as the sweep in" in text and "--set rounds=4" in text
    assert "1 of 1 runs done" in text and "nothing left to run" in text


# -- 6. deploy-local with more Byzantine clients than nodes -------------------------------------
def test_deploy_local_says_how_many_byzantine_clients_fit(tmp_path: Path, capsys):
    pytest.importorskip("flwr")
    cfg = _write_config(
        tmp_path / "c.toml", tiny_config(attack={"name": "sign_flip", "f": 5}, clients={"n": 23})
    )
    assert main(["deploy-local", cfg, "--nodes", "4", "--out", str(tmp_path / "d")]) == 2
    assert "attack.f = 5 Byzantine of 4 nodes: add --set attack.f=3 (or fewer)" in _err(capsys)
    assert not (tmp_path / "d").exists()


# -- 7. the Python API: progress and a run folder by default -----------------------------------
def test_the_api_writes_a_run_folder_and_shows_progress_by_default(
    tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    first = diversefl.run(tiny_config(rounds=2))
    second = diversefl.run(tiny_config(rounds=2))  # in the same second: a folder of its own
    for result in (first, second):
        assert result.out_dir is not None and result.out_dir.parent == Path("runs")
        assert re.fullmatch(r"run-\d{8}-\d{6}(-2)?", result.out_dir.name)
        assert (tmp_path / result.out_dir / "summary.json").is_file()
    assert first.out_dir != second.out_dir
    assert "run: round 2/2, acc" in capsys.readouterr().out  # the CLI's plain progress line
    named = diversefl.run({**tiny_config(rounds=2), "name": "mine"}, progress=False)
    assert named.out_dir.name.startswith("mine-") and capsys.readouterr().out == ""
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert diversefl.run(tiny_config(rounds=2), out=False, progress=False).out_dir is None
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before
    with pytest.raises(ValueError, match="resume=True needs out=RUN_DIR"):
        diversefl.run(tiny_config(rounds=2), resume=True)


def test_default_run_dir_takes_a_free_name(tmp_path: Path):
    from diversefl.api import default_run_dir

    now = 1_700_000_000.0
    first = default_run_dir("demo", tmp_path, now)
    assert first.parent == tmp_path and re.fullmatch(r"demo-\d{8}-\d{6}", first.name)
    first.mkdir()
    assert default_run_dir("demo", tmp_path, now) == tmp_path / f"{first.name}-2"


# -- 8. sweep estimates count the runs not started ----------------------------------------------
def test_seconds_left_by_hand():
    from diversefl.experiments.sweep import pace_text, seconds_left

    # 2 runs of 100 rounds in 100 s and 300 s: 2 s per round; 250 rounds left -> 500 s
    finished = [(100.0, 100), (300.0, 100)]
    assert seconds_left(finished, [100, 100, 50]) == pytest.approx(500.0)
    assert seconds_left(finished, [100, 100, 50], jobs=2) == pytest.approx(250.0)
    assert seconds_left(finished, [100], jobs=4) == pytest.approx(200.0)  # one run: not / 4
    assert seconds_left(finished, [0, 0]) == 0.0
    assert seconds_left([], [100]) is None
    assert pace_text(2, 5, 10.0, left=3000.0) == "2/5 this sweep, ~50 min left"


def test_the_sweep_log_times_the_runs_left_by_the_finished_runs(tmp_path: Path, monkeypatch):
    """Runs that finish fast here (resumed near their end, say) took their whole wall time
    elsewhere: the estimate goes by each run's own time per round, not the time since the
    sweep started, and counts every run not started yet."""
    import diversefl.experiments.sweep as sweep

    raw = {**tiny_config(rounds=10), "sweep": {"aggregators": ["mean"], "seeds": [0, 1, 2, 3]}}
    cells = sweep.expand(raw)

    def instant_run(cell, run_dir, data_dir, progress, threads=0):
        summary = {"final_test_accuracy": 0.5, "best_test_accuracy": 0.5, "mean_tpr": None,
                   "mean_fpr": None, "wall_seconds": 60.0}  # fmt: skip
        return sweep.CellResult(summary)

    monkeypatch.setattr(sweep, "_run_cell", instant_run)
    lines: list[str] = []
    sweep.run_sweep(cells, tmp_path, progress=False, echo=lines.append, csv_name=None)
    # 60 s per 10-round run: after 1 of 4, 3 runs (30 rounds) left -> 180 s = 3 min
    assert lines[0].endswith("| 1/4 this sweep, ~3 min left")
    assert lines[2].endswith("| 3/4 this sweep, ~60 s left")


# -- 9. the demo's seconds column ---------------------------------------------------------------
def test_the_demo_seconds_do_not_charge_the_warm_up_to_the_first_row(
    tmp_path: Path, capsys, monkeypatch
):
    """A fake run on a fake clock: the first run in a process costs 5 s more (torch's first
    calls). The demo pays it in an untimed warm-up, so both rows show the runs' own 1 s."""
    calls: list[tuple[int, object]] = []

    def fake_run(cfg, **kwargs):
        seconds = 1.0 + (5.0 if not calls else 0.0)
        calls.append((cfg.rounds, kwargs.get("out")))
        summary = {"final_test_accuracy": 0.5, "best_test_accuracy": 0.5, "mean_tpr": 1.0,
                   "mean_fpr": 0.0, "wall_seconds": seconds}  # fmt: skip
        return SimpleNamespace(summary=summary)

    monkeypatch.setattr(diversefl.api, "run", fake_run)
    assert main(["run", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    rows = [
        ln for ln in capsys.readouterr().out.splitlines() if re.match(r"│ (mean|diversefl) ", ln)
    ]
    assert [ln.split("│")[-2].strip() for ln in rows] == ["1.0", "1.0"]
    assert [(r, out) for r, out in calls[:2]] == [(2, False), (2, False)]  # warm-ups: untimed
    assert [r for r, _ in calls[2:]] == [300, 300]


# -- 10. long paths are not hard-wrapped when the output is not a terminal ---------------------
def test_log_lines_keep_long_paths_on_one_line(tmp_path: Path):
    raw = {**tiny_config(rounds=2), "sweep": {"aggregators": ["mean"]}}
    grid = _write_config(tmp_path / "grid.toml", raw)
    out = tmp_path / ("a-long-folder-name-" * 6) / "sweep"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [sys.executable, "-m", "diversefl.cli", "sweep", grid, "--status", "--out", str(out)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        check=True,
    )
    assert len(str(out)) > 120
    assert any(f"{out} does not exist yet" in line for line in done.stdout.splitlines())
    assert any(f"in {out}: finished runs" in line for line in done.stdout.splitlines())


def test_a_run_config_toml_reruns_with_another_rule_and_attack(tmp_path: Path):
    """Its written-out defaults (DiverseFL's eps1, ..., the Gaussian's sigma) do not follow
    ``--set aggregator.name=median`` to a rule that has no such setting; a setting chosen away
    from its default still does (and is refused there, naming it)."""
    saved = tmp_path / "config.toml"
    saved.write_text(tomli_w.dumps(to_toml_dict(make_config(GAUSS))))
    cfg = load_config(saved, ["aggregator.name=median", "attack.name=sign_flip"])
    assert cfg.aggregator.params() == {} and cfg.attack.params() == {}
    assert load_config(saved, ["attack.name=same_value"]).attack.params() == {"sigma": 1e4}
    tuned = {**GAUSS, "aggregator": {"name": "diversefl", "eps2": 3.0}}
    saved.write_text(tomli_w.dumps(to_toml_dict(make_config(tuned))))
    with pytest.raises(
        ValueError, match="aggregator.eps2: unknown setting for aggregator 'median'"
    ):
        load_config(saved, ["aggregator.name=median"])


def test_show_config_prints_every_key_with_the_overrides_and_runs_nothing(
    tmp_path: Path, capsys, monkeypatch
):
    """`run CONFIG --show-config` prints the config the run would save (every default written
    out, --set applied) as TOML, and neither trains nor writes a run folder."""
    monkeypatch.chdir(tmp_path)
    cfg = _write_config(tmp_path / "c.toml", GAUSS)
    assert main(["run", cfg, "--set", "aggregator.eps2=3.0", "--show-config"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    expected = to_toml_dict(
        make_config({**GAUSS, "aggregator": {"name": "diversefl", "eps2": 3.0}})
    )
    assert shown == json.loads(json.dumps(expected))
    assert shown["aggregator"]["eps2"] == 3.0 and "eps1" in shown["aggregator"]  # defaults too
    assert shown["attack"]["sigma"] == 10000.0  # the Gaussian attack's own default
    assert not (tmp_path / "runs").exists()
    assert main(["run", "--show-config"]) == 0  # no config: the demo's DiverseFL run
    assert tomllib.loads(capsys.readouterr().out)["aggregator"]["name"] == "diversefl"
