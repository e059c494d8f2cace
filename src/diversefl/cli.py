"""The ``diversefl`` command (run, sweep, detection, plot, reproduce, deploy-local, data
fetch): errors as one ``error: ...`` message on stderr with exit status 2; Ctrl-C exit 130."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from diversefl.presets import add_presets_parser, resolve_config_arg
from diversefl.review.cli import add_samples_parser

if TYPE_CHECKING:
    from diversefl.experiments.ray_sweep import RayOptions


def log_console(stderr: bool = False) -> Console:
    """A rich console that never hard-wraps a line (a long path stays one line, to copy): soft
    wrap, and where the output is not a terminal (a pipe, a log file: rich would assume 80
    columns) as wide as the text, unless $COLUMNS sets a width."""
    out = Console(stderr=stderr, soft_wrap=True)
    if not (out.is_terminal or out.is_jupyter) and "COLUMNS" not in os.environ:
        out.width = 1000  # tables keep their own (content) width; nothing is wrapped
    return out


console = log_console()
notes = log_console(stderr=True)  # status lines next to output meant for a pipe (tables)


def _default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set or [])
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    if args.rounds is not None:
        sets.append(f"rounds={args.rounds}")
    if args.device is not None:
        sets.append(f'engine.device="{args.device}"')
    return sets


def cmd_run(args: argparse.Namespace) -> int:
    """``diversefl run [CONFIG]``: one experiment, or the built-in demo without a config."""
    from diversefl.api import resolve_config, run
    from diversefl.cli_hints import Interrupted, resume_advice, saved_config
    from diversefl.config import ConfigError
    from diversefl.demo import demo_config

    if args.config is None and not args.resume:
        if args.show_config:  # the demo's DiverseFL run
            return _show_config(resolve_config(demo_config("diversefl"), _run_overrides(args)))
        return _run_demo(args)
    if args.config is not None:  # a file, else a preset name (paper/mnist-softmax)
        args.config = resolve_config_arg(args.config)
    if args.resume and args.out is None:  # the default --out is new (timestamped) every time
        raise ConfigError("--resume needs --out RUN_DIR, the run directory to continue")
    config = args.config
    if config is None:  # --resume with only --out: the saved config is used
        config = saved_config(Path(args.out))
    cfg = resolve_config(config, _run_overrides(args))
    if args.show_config:
        return _show_config(cfg)
    if args.config and "[sweep]" in Path(args.config).read_text():
        console.print(
            "note: this file defines a \\[sweep] grid; running only its base config "
            "(`diversefl sweep` runs the grid)"
        )
    out = Path(args.out) if args.out else _default_out(cfg.name or Path(str(config)).stem)
    finished = args.resume and _finished_rounds(out) == cfg.rounds  # nothing left to train
    try:
        result = run(
            cfg,
            data_dir=args.data_dir,
            out=out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        raise Interrupted(resume_advice(out)) from None
    s = result.summary
    accuracy = (
        f"final test accuracy {s['final_test_accuracy']:.4f} (best {s['best_test_accuracy']:.4f})"
    )
    if finished:
        console.print(
            f"{out} holds a finished run of {cfg.rounds} rounds (nothing to resume; --rounds N "
            f"extends it): {accuracy}, trained in {s['wall_seconds']:.1f} s"
        )
        return 0
    console.print(f"{accuracy} in {s['wall_seconds']:.1f} s; run files in {out}")
    return 0


def _finished_rounds(out: Path) -> int | None:
    """The rounds of the finished run in ``out`` (its ``summary.json`` and saved config), None
    when it holds no finished run: a ``--resume`` to as many rounds trains nothing."""
    from diversefl.config import ConfigError, load_config

    if not (out / "summary.json").is_file():
        return None
    try:
        return load_config(out / "config.toml").rounds
    except (ConfigError, OSError, ValueError):
        return None  # the resume itself reports what is wrong with the folder


def _show_config(cfg: Any) -> int:
    """``run [CONFIG] --show-config``: the resolved config, every key with its value or default
    (what the run's config.toml would hold), printed as TOML; nothing runs or is written."""
    import tomli_w

    from diversefl.config import to_toml_dict

    sys.stdout.write(tomli_w.dumps(to_toml_dict(cfg)))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from diversefl.api import resolve_config, run
    from diversefl.cli_hints import Interrupted
    from diversefl.config import ConfigError
    from diversefl.demo import DEMO_AGGREGATORS, demo_config, demo_description, warm_up

    chosen = [k for k in (args.set or []) if k.split("=")[0].split(".")[0].strip() == "aggregator"]
    if chosen:
        both = " and ".join(DEMO_AGGREGATORS)
        raise ConfigError(
            f"--set {chosen[0]}: the demo trains one federation with {both} and labels its "
            "rows so; to try another defense give a config (diversefl run CONFIG.toml --set "
            "aggregator.name=...; `diversefl presets` lists the presets)"
        )
    root = Path(args.out) if args.out else _default_out("demo")
    # validate the overrides for every run before anything starts or is written
    cfgs = {agg: resolve_config(demo_config(agg), _run_overrides(args)) for agg in DEMO_AGGREGATORS}
    console.print(
        f"[bold]diversefl demo[/]: {demo_description(cfgs[DEMO_AGGREGATORS[0]])}.\n"
        f"Training the same federation with {' and '.join(DEMO_AGGREGATORS)}; run files in {root}"
    )
    rows = []
    try:
        warm_up(cfgs.values(), args.data_dir)  # untimed: the seconds column compares the rules
        for agg, cfg in cfgs.items():
            res = run(
                cfg,
                data_dir=args.data_dir,
                out=root / agg,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
            rows.append((agg, res.summary))
    except KeyboardInterrupt:
        raise Interrupted(
            f": `diversefl run` starts the demo again (files so far: {root})"
        ) from None
    first = cfgs[DEMO_AGGREGATORS[0]]
    table = Table(title=f"demo: {first.attack.name}, n = {first.clients.n}, f = {first.attack.f}")
    for col in (
        "aggregator",
        "final accuracy",
        "Byzantine rejected (TPR)",
        "honest rejected (FPR)",
        "seconds",
    ):
        table.add_column(col)
    for agg, s in rows:
        tpr = "-" if s["mean_tpr"] is None else f"{s['mean_tpr']:.3f}"
        fpr = "-" if s["mean_fpr"] is None else f"{s['mean_fpr']:.3f}"
        table.add_row(agg, f"{s['final_test_accuracy']:.4f}", tpr, fpr, f"{s['wall_seconds']:.1f}")
    console.print(table)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """``diversefl sweep CONFIG``: the aggregators x attacks x seeds grid of a sweep file."""
    from diversefl.experiments.sweep import load_sweep, run_sweep, select

    args.config = resolve_config_arg(args.config)  # a file, else a preset name
    overrides = _run_overrides(args)
    cells = load_sweep(args.config, overrides)
    out = Path(args.out) if args.out else _default_sweep_out(Path(args.config))
    if args.status:
        if not overrides:  # what the sweep in `out` ran with (--rounds 20, ...)
            cells = _recorded_grid(args.config, out) or cells
        return _sweep_status(select(cells, args.only), out, args.jobs, Path(args.config).name)
    ray_options = _ray_options(args)  # None without --ray
    if ray_options is not None and args.pack:
        from diversefl.config import ConfigError

        raise ConfigError("--pack runs packs in this machine's processes: drop it with --ray")
    n_sel = len(select(cells, args.only))
    console.print(
        f"sweep: {n_sel} of {len(cells)} runs into {out}"
        + (f", {args.jobs} at a time" if args.jobs > 1 else "")
    )
    echo = lambda m: console.print(m, highlight=False, markup=False)  # noqa: E731
    failed: dict[str, str] = {}
    if ray_options is not None:
        from diversefl.experiments.ray_sweep import run_ray_sweep

        result = run_ray_sweep(
            cells, out, ray_options, args.data_dir, echo, only=args.only, overrides=overrides
        )
        rows, failed = result.rows, result.failed
    else:
        rows = run_sweep(
            cells,
            out,
            data_dir=args.data_dir,
            progress=not args.quiet and args.jobs <= 1,
            echo=echo,
            jobs=args.jobs,
            only=args.only,
            overrides=overrides,
            pack=args.pack,
        )
    table = Table(title=f"sweep {Path(args.config).name}: final test accuracy")
    for col in ("aggregator", "attack", "seed", "final acc", "best acc", "TPR", "FPR", "s"):
        table.add_column(col)
    for r in rows:
        fmt = lambda v: "-" if v in (None, "") else f"{float(v):.3f}"  # noqa: E731
        table.add_row(
            r["aggregator"],
            r["attack"],
            str(r["seed"]),
            fmt(r["final_test_accuracy"]),
            fmt(r["best_test_accuracy"]),
            fmt(r["mean_tpr"]),
            fmt(r["mean_fpr"]),
            f"{float(r['wall_seconds']):.0f}",
        )
    console.print(table)
    console.print(f"wrote {out / 'sweep.csv'}")
    return _report_failed(failed)


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    """``--ray``'s settings (None without ``--ray``, where its own options ``--threads``,
    ``--gpu-fraction`` and ``--retries`` are an error)."""
    from diversefl.config import ConfigError

    given = {k: getattr(args, k) for k in ("threads", "gpu_fraction", "retries")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.ray is None:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise ConfigError(f"{flag} sets what each run asks a Ray cluster for: add --ray")
        return None
    if args.ray != "local" and args.jobs > 1:
        raise ConfigError(
            f"--jobs {args.jobs}: sizes the local instance that --ray without an address "
            f"starts; the cluster at --ray {args.ray} runs as many runs at once as it has CPUs"
        )
    from diversefl.experiments.ray_sweep import RayOptions

    threads = given.get("threads", 1)
    cpus = args.jobs * threads if args.jobs > 1 else None  # None: all cores
    return RayOptions(address=args.ray, cpus=cpus, **given)


def _report_failed(failed: dict[str, str]) -> int:
    """Exit status 1 with each failed run's error (on stderr) when a ``--ray`` sweep had any."""
    for name, error in failed.items():
        _error(f"{name}: {error}")
    if failed:
        _error(
            f"{len(failed)} run(s) failed; the others are in sweep.csv (the same command "
            "runs the failed ones again)"
        )
    return 1 if failed else 0


def _default_sweep_out(config: Path) -> Path:
    """``runs/<group>/<name>`` for a shipped preset (``paper/mnist-softmax`` and
    ``label-flip/mnist-softmax`` do not share a folder), ``runs/<file stem>`` otherwise."""
    from diversefl.presets import PRESET_DIR

    try:
        return Path("runs") / config.resolve().relative_to(PRESET_DIR.resolve()).with_suffix("")
    except ValueError:  # not a preset
        return Path("runs") / config.stem


def _recorded_grid(config: str, out: Path) -> list | None:
    """The cells of ``config`` with the overrides the sweep in ``out`` recorded (None when it
    recorded none), so that ``--status`` checks the runs against the grid they belong to."""
    from diversefl.experiments.sweep import load_sweep
    from diversefl.experiments.sweep_record import read_overrides

    recorded = read_overrides(out)
    if not recorded:
        return None
    shown = " ".join(f"--set {item}" for item in recorded)
    console.print(
        f"as the sweep in {out} ran: {shown} (to go on with it, run the sweep with the same; "
        "without them its finished runs differ from the grid's and are refused)",
        highlight=False,
        markup=False,
    )
    return load_sweep(config, recorded)


def _sweep_status(cells: list, out: Path, jobs: int, name: str) -> int:
    """``diversefl sweep CONFIG --status``: finished runs per defense and seed, time left."""
    from diversefl.experiments.sweep_status import done_matrix, summary_lines, sweep_progress

    progress = sweep_progress(cells, out)
    aggs, seeds, counts = done_matrix(progress)
    table = Table(title=f"sweep {name} in {out}: finished runs (+ running or interrupted)")
    table.add_column("defense")
    for s in seeds:
        table.add_column(f"seed {s}", justify="right")
    for agg in aggs:
        cells_text = []
        for s in seeds:
            done, started, total = counts.get((agg, s), (0, 0, 0))
            cells_text.append(
                "" if total == 0 else f"{done}/{total}" + (f" +{started}" if started else "")
            )
        table.add_row(agg, *cells_text)
    totals = []
    for s in seeds:
        done = sum(counts.get((a, s), (0, 0, 0))[0] for a in aggs)
        total = sum(counts.get((a, s), (0, 0, 0))[2] for a in aggs)
        totals.append(f"{done}/{total}")
    table.add_row("all", *totals, style="bold")
    console.print(table)
    if not out.exists():
        console.print(
            f"{out} does not exist yet: no run of this grid has started there", highlight=False
        )
    for line in summary_lines(progress, jobs):
        console.print(line, highlight=False)
    return 0


def cmd_detection(args: argparse.Namespace) -> int:
    """``diversefl detection SWEEP``: accuracy vs OracleSGD, TPR/FPR and C1/C2 pass rates
    (``--spread``: median and worst seed, and who escapes in the worst seed)."""
    from diversefl.experiments.detection import (
        cosine_table,
        detection_table,
        escapes_section,
        per_client_table,
        read_sweep,
        spread_table,
    )

    runs = read_sweep(args.path)
    if args.spread:
        text = spread_table(runs) + "\n" + escapes_section(runs)
    else:
        text = detection_table(runs)
    for agg in args.per_client or []:
        text += f"\nPer Byzantine client, {agg}:\n\n" + per_client_table(runs, agg)
    if args.cosines:
        text += "\nHonest clients' guide-update cosines:\n\n" + cosine_table(runs)
    if args.out:
        Path(args.out).write_text(text)
        console.print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def _seed_list(text: str | None) -> list[int] | None:
    """``--seeds 0,2`` as a list of ints (None: every seed)."""
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds needs comma-separated integers, got {text!r}") from None
    return seeds


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--jobs 0`` is refused, naming the value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def cmd_plot(args: argparse.Namespace) -> int:
    """``diversefl plot DIR``: curves (or Fig. 2's C1 x C2 scatter, or a table) from saved runs;
    ``diversefl plot RUN1 RUN2 ...``: those runs' curves in one figure."""
    from diversefl import plots

    if len(args.path) > 1:
        return _plot_several(args)
    args.path = args.path[0]
    seeds = _seed_list(args.seeds)
    if args.seed_spread is not None:
        from diversefl.experiments.seed_spread import seed_spread_table

        if seeds is not None:
            raise ValueError(
                f"--seed-spread compares one seed with all seeds; --seeds {args.seeds} does "
                "not apply (give the seed to compare as --seed-spread SEED)"
            )
        ref = args.seed_spread
        try:
            seed = None if ref == "lowest" else int(ref)
        except ValueError:
            raise ValueError(f"--seed-spread takes a seed number, got {ref!r}") from None
        print(seed_spread_table(args.path, metric=args.table_metric, seed=seed))
        return 0
    if args.table or args.heatmap:
        if args.table:
            text = plots.accuracy_table(args.path, metric=args.table_metric, seeds=seeds)
            if args.out:
                Path(args.out).write_text(text + "\n")
                console.print(f"wrote {args.out}")
            else:
                print(text)
        if args.heatmap:  # on stderr, so `plot --table --heatmap F > table.md` stays a table
            heatmap = plots.plot_heatmap(
                args.path, metric=args.table_metric, out=args.heatmap, seeds=seeds
            )
            notes.print(f"wrote {heatmap}")
        return 0
    if args.bars:
        metrics = [m.strip() for m in args.bars.split(",")]
        if not all(metrics):
            raise ValueError(f"--bars needs comma-separated metric names, got {args.bars!r}")
        bars = plots.plot_metric_bars(args.path, metrics, out=args.out, seeds=seeds)
        console.print(f"wrote {bars}")
        return 0
    if args.c1c2:
        path = plots.plot_c1c2(args.path, out=args.out, clients=args.clients)
    elif args.cosines is not None:
        path = plots.plot_cosines(
            args.path, out=args.out, clients=_client_ids(args.cosines), title=args.title
        )
    else:
        path = plots.plot_curves(args.path, metric=args.metric, out=args.out, title=args.title)
    console.print(f"wrote {path}")
    return 0


def _client_ids(text: str) -> list[int] | None:
    """``--cosines``' value: "byzantine" (None: the run's Byzantine clients) or ids "11,12"."""
    if text == "byzantine":
        return None
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--cosines takes client ids separated by commas (e.g. 11,12), got {text!r}"
        ) from None
    return ids


def _plot_several(args: argparse.Namespace) -> int:
    """``diversefl plot RUN1 RUN2 ...``: one line per run directory (--metric, --out, --title)."""
    from diversefl import plots

    only_one = {
        "--table": args.table,
        "--heatmap": args.heatmap,
        "--bars": args.bars,
        "--c1c2": args.c1c2,
        "--cosines": args.cosines,
        "--seed-spread": args.seed_spread,
        "--seeds": args.seeds,
    }
    given = [flag for flag, value in only_one.items() if value not in (None, False)]
    if given:
        raise ValueError(
            f"{given[0]} reads one sweep's or run's directory; several run directories are "
            "compared as curves (--metric, --out, --title)"
        )
    path = plots.plot_runs(args.path, metric=args.metric, out=args.out, title=args.title)
    console.print(f"wrote {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``diversefl reproduce FIGURE``: the sweep behind one paper figure, then the figure;
    ``reproduce all``: every MNIST figure's runs in one pool, then the figures."""
    from diversefl.config import ConfigError
    from diversefl.experiments.reproduce import reproduce
    from diversefl.experiments.reproduce_all import reproduce_all

    if args.list or not args.figure:
        return _reproduce_list(args)
    common = {
        "out": args.out,
        "data_dir": args.data_dir,
        "rounds": args.rounds,
        "progress": not args.quiet and args.jobs <= 1,
        "echo": _plain_echo,
        "jobs": args.jobs,
        "device": args.device,
    }
    if args.pack and args.figure != "all":
        raise ConfigError(
            f"--pack {args.pack}: only with reproduce all (for one figure's runs: sweep --pack)"
        )
    if args.figure == "all":
        reproduce_all(**common, refresh=args.recalibrate, pack=args.pack)
    else:
        reproduce(args.figure, **common)
    return 0


def _plain_echo(message: str) -> None:
    """Print a progress line as it is (no markup, no highlighting)."""
    console.print(message, highlight=False, markup=False)


def _reproduce_list(args: argparse.Namespace) -> int:
    """``reproduce --list``: every figure, its runs and its time here; the MNIST figures' is
    their runs x rounds x this machine's measured seconds per round (cached; see
    diversefl.experiments.calibrate), shared among ``--jobs`` workers."""
    from diversefl.experiments.calibrate import cache_path
    from diversefl.experiments.reproduce import FIGURES, figure_cells
    from diversefl.experiments.reproduce_all import (
        figure_estimates,
        measured_round_seconds,
        threads_per_run,
    )
    from diversefl.experiments.sweep import format_duration

    per_round = measured_round_seconds(args.jobs, args.recalibrate, _plain_echo)
    estimates = figure_estimates(per_round, args.jobs)
    table = Table(title="paper figures (diversefl reproduce FIGURE, or all)")
    for col in ("figure", "what", "needs", "runs", f"time here (--jobs {args.jobs})"):
        table.add_column(col)
    for f in FIGURES.values():
        runs, seconds = estimates.get(f.name, (len(figure_cells(f)), None))
        time_here = f.estimate if seconds is None else f"~{format_duration(seconds)}"
        table.add_row(f.name, f.description, f.needs, str(runs), time_here)
    runs, seconds = estimates["all"]
    table.add_row("all", "every MNIST figure, each run once", "MNIST", str(runs),
                  f"~{format_duration(seconds)}")  # fmt: skip
    console.print(table)
    rates = ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in per_round.items())
    _plain_echo(
        f"seconds per round measured here, {threads_per_run(args.jobs)} threads per run: "
        f"{rates}; cached in {cache_path()} (--recalibrate measures again)"
    )
    return 0


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """``diversefl deploy-local CONFIG --nodes N``: run the config through a local Flower
    deployment (needs the ``flower`` extra)."""
    try:
        from diversefl.flower.deploy import main as deploy_main
    except ImportError as err:
        raise SystemExit(f"deploy-local needs Flower: pip install -e '.[flower]' ({err})") from None
    return deploy_main(args.args)


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """``diversefl data fetch NAME --to DIR``: download and verify a dataset."""
    from diversefl.data.fetch import fetch

    paths = fetch(args.name, args.to, base_url=args.base_url, progress=not args.quiet)
    for p in paths:
        console.print(f"ok {p}")
    return 0


def version_line() -> str:
    """``diversefl X (torch Y, python Z)``, read from package metadata so that ``--version``
    does not pay for importing torch."""
    import platform
    from importlib import metadata

    def installed(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"diversefl {installed('diversefl')} (torch {installed('torch')}, "
        f"python {platform.python_version()})"
    )


class VersionAction(argparse.Action):
    """``--version``: the metadata lookups (~45 ms) happen only when the flag is given, not on
    every command's parser build."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(version_line())
        parser.exit()


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl run [CONFIG]``: one experiment, or the demo."""
    r = sub.add_parser("run", help="run one experiment (no CONFIG: the built-in demo)")
    r.add_argument("config", nargs="?", help="TOML config file or preset name (omit for the demo)")
    r.add_argument("--data-dir", help="dataset directory (default: $DIVERSEFL_DATA)")
    r.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    r.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set aggregator.name=median (repeatable)",
    )
    r.add_argument("--device", help="cpu | cuda | cuda:N")
    r.add_argument("--seed", type=int, help="override the config's seed")
    r.add_argument(
        "--rounds", type=int, help="override the number of rounds (with --resume: extend the run)"
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (required) from its checkpoint; a finished run is "
        "returned as saved, or extended with a larger --rounds",
    )
    r.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    r.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config (every key, defaults included, with --set applied) as "
        "TOML and exit without running",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    r.set_defaults(func=cmd_run)


def _add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl sweep CONFIG``: a grid of runs, or its ``--status``."""
    sw = sub.add_parser("sweep", help="run a grid of aggregators x attacks x seeds")
    sw.add_argument(
        "config", help="TOML file (or preset name) with a base config and a [sweep] table"
    )
    sw.add_argument("--data-dir", help="dataset directory (default: $DIVERSEFL_DATA)")
    sw.add_argument(
        "--out",
        help="sweep directory (default: runs/GROUP/NAME for a preset, runs/<file stem> otherwise)",
    )
    sw.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a base config key (repeatable); where the grid lists aggregators "
        "(attacks), only the federation's keys of [aggregator] ([attack]) can be set: "
        "aggregator.assumed_f, attack.f, .byzantine, .byzantine_seed, .also_seeded",
    )
    sw.add_argument("--device", help="cpu | cuda | cuda:N")
    sw.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    sw.add_argument("--rounds", type=int, help="override the number of rounds of every run")
    sw.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    sw.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="runs at once, in worker processes sharing the CPU threads (default 1)",
    )
    sw.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only cells whose name (aggregator__attack__seedK) matches; repeatable",
    )
    sw.add_argument(
        "--status",
        action="store_true",
        help="run nothing: finished runs per defense and seed in --out, and the time left "
        "with --jobs at the pace of each defense's finished runs (safe while the sweep runs)",
    )
    sw.add_argument(
        "--pack",
        type=_pack_size,
        metavar="K|auto",
        help="run cells that share their batches (same data, clients, model, seed) K at a "
        "time in one process, one batched gradient per round for all: several times faster "
        "for small models; 'auto' packs models under 50,000 parameters (equal to the runs "
        "alone up to float rounding)",
    )
    _add_ray_options(sw)
    sw.set_defaults(func=cmd_sweep)


def _pack_size(text: str) -> int | str:
    """``--pack``: a pack size >= 2, or "auto"."""
    if text == "auto":
        return text
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a pack size (2 or more) or 'auto', got {text!r}"
        ) from None
    if size < 2:
        raise argparse.ArgumentTypeError(f"a pack size is 2 or more (or 'auto'), got {size}")
    return size


def _add_ray_options(sw: argparse.ArgumentParser) -> None:
    """``sweep --ray [ADDRESS]`` and what each run asks the Ray cluster for."""
    sw.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run each run as a Ray task and collect its files into --out: no value starts "
        "Ray on this machine (--jobs runs at once, default all cores), 'auto' joins the "
        "cluster this machine is in, HOST:PORT a given head (needs diversefl[ray])",
    )
    sw.add_argument(
        "--threads",
        type=_positive_int,
        help="with --ray: CPU threads (Ray CPUs) per run (default 1)",
    )
    sw.add_argument(
        "--gpu-fraction",
        type=float,
        help="with --ray and --device cuda: the share of a GPU each run asks for (default 1; "
        "0.25 runs four per GPU)",
    )
    sw.add_argument(
        "--retries",
        type=int,
        help="with --ray: times Ray reruns a run whose worker died (default 3)",
    )


def _add_detection_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl detection SWEEP``: the detection report of saved runs."""
    de = sub.add_parser(
        "detection",
        help="who was caught: accuracy vs OracleSGD, TPR/FPR, C1/C2 pass rates of a sweep",
    )
    de.add_argument("path", help="a sweep directory or one run's directory (with decisions.csv)")
    de.add_argument("--out", help="write the markdown table to this file")
    de.add_argument(
        "--per-client",
        action="append",
        metavar="AGGREGATOR",
        help="also list each Byzantine client's acceptance share for this aggregator",
    )
    de.add_argument(
        "--cosines",
        action="store_true",
        help="also the honest clients' guide-update cosines (percentiles, and the share a "
        "min_cosine of 0.3 / 0.5 / 0.7 would reject): choose min_cosine from these",
    )
    de.add_argument(
        "--spread",
        action="store_true",
        help="per defense and placement over seeds: TPR and the gap to OracleSGD as median and "
        "worst seed, and which Byzantine client escapes in the worst seed and at what cosine",
    )
    de.set_defaults(func=cmd_detection)


def _add_plot_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl plot DIR``: figures and tables from saved runs."""
    pl = sub.add_parser("plot", help="figures and tables from saved run or sweep directories")
    pl.add_argument(
        "path",
        nargs="+",
        help="a run directory or one sweep's directory (not a folder of several); several run "
        "directories: their curves of --metric in one figure",
    )
    pl.add_argument(
        "--metric",
        default="test_accuracy",
        help="test_accuracy | test_loss | main_accuracy | backdoor_accuracy | tpr | "
        "fpr | n_accepted",
    )
    pl.add_argument(
        "--out",
        help="output file (.png, .pdf, .svg; .md with --table). Default: in the run or sweep "
        "directory, METRIC.png (curves), c1c2.png, cosines.png or bars.png; several runs: "
        "compare-METRIC.png in the current directory; --table prints to the terminal",
    )
    pl.add_argument("--title")
    pl.add_argument(
        "--c1c2",
        action="store_true",
        help="the paper's Fig. 2: DiverseFL's C1 x C2 per client and round",
    )
    pl.add_argument("--clients", type=int, help="--c1c2: honest clients to draw (default all)")
    pl.add_argument(
        "--cosines",
        nargs="?",
        const="byzantine",
        metavar="IDS",
        help="one run's DiverseFL direction test over rounds: these clients' (default the "
        "Byzantine ones; e.g. 11,12) guide-update cosines and thresholds, the rounds they were "
        "accepted, and the honest clients' band",
    )
    _add_plot_table_options(pl)
    pl.set_defaults(func=cmd_plot)


def _add_plot_table_options(pl: argparse.ArgumentParser) -> None:
    """The options of ``plot`` that read a sweep's ``sweep.csv`` (tables, heat-map, bars)."""
    pl.add_argument(
        "--table",
        action="store_true",
        help="markdown table of --table-metric (mean +/- sample std over seeds)",
    )
    pl.add_argument(
        "--table-metric",
        default="final_test_accuracy",
        help="--table, --heatmap, --seed-spread: the sweep.csv metric shown (default "
        "final_test_accuracy)",
    )
    pl.add_argument("--heatmap", help="draw the heat-map of --table-metric to this file")
    pl.add_argument(
        "--seeds",
        metavar="S1,S2,...",
        help="--table, --heatmap, --bars: only the runs of these seeds (e.g. 0 while seeds "
        "1-2 of a grid are still running)",
    )
    pl.add_argument(
        "--seed-spread",
        nargs="?",
        const="lowest",
        metavar="SEED",
        help="markdown table: per defense, how far one seed (default the lowest) is from the "
        "mean over all seeds (worst attack, mean under attack, largest cell std and distance)",
    )
    pl.add_argument(
        "--bars",
        metavar="M1,M2,...",
        help="bars per aggregator of these sweep.csv metrics (mean +/- std over runs), e.g. "
        "final_main_accuracy,final_backdoor_accuracy",
    )


def _add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl reproduce FIGURE``: one paper figure's sweep and drawing."""
    rp = sub.add_parser("reproduce", help="run and draw one of the paper's figures")
    rp.add_argument(
        "figure", nargs="?", help="fig2, fig3, fig4, fig7, fig9, fig10, ..., or all (every "
        "MNIST figure, its runs in one pool of --jobs workers)"
    )  # fmt: skip
    rp.add_argument(
        "--list", action="store_true",
        help="what each figure needs, and its time measured on this machine (cached)"
    )  # fmt: skip
    rp.add_argument(
        "--recalibrate", action="store_true",
        help="measure the seconds per round anew (--list, all) instead of the cached ones"
    )  # fmt: skip
    rp.add_argument("--data-dir", help="dataset directory (default: $DIVERSEFL_DATA)")
    rp.add_argument("--out", help="output directory (default: runs/reproduce)")
    rp.add_argument("--rounds", type=int, help="shorter runs (e.g. 5 for a smoke test)")
    rp.add_argument("--device", help="cpu | cuda | cuda:N (default: each preset's engine.device)")
    rp.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    rp.add_argument(
        "--jobs", type=_positive_int, default=1, help="runs at once (as in sweep --jobs)"
    )
    rp.add_argument(
        "--pack", type=_pack_size, metavar="K|auto",
        help="with all: run a preset's small-model runs K at a time in one process, as sweep "
        "--pack does (auto: models under 50,000 parameters; equal to the runs alone up to "
        "float rounding)"
    )  # fmt: skip
    rp.set_defaults(func=cmd_reproduce)


def _add_deploy_local_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl deploy-local ...``: every argument goes to the deploy command's own parser."""
    dl = sub.add_parser(
        "deploy-local",
        help="the same experiment as a real Flower federation on 127.0.0.1 (SuperLink + N "
        "SuperNodes); see docs/flower.md",
        add_help=False,
    )
    dl.add_argument("args", nargs=argparse.REMAINDER)
    dl.set_defaults(func=cmd_deploy_local)


def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    """``diversefl data fetch NAME --to DIR``: dataset utilities."""
    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download a dataset and verify its checksums")
    f.add_argument("name", choices=["mnist", "fashion-mnist", "cifar10", "cifar100"])
    f.add_argument("--to", required=True, help="data directory to fill")
    f.add_argument(
        "--base-url", help="mirror that directly holds the files: an http(s) URL or a folder"
    )
    f.add_argument("--quiet", action="store_true", help="no download progress")
    f.set_defaults(func=cmd_data_fetch)


SUBCOMMANDS = (
    _add_run_parser,
    _add_sweep_parser,
    _add_detection_parser,
    _add_plot_parser,
    _add_reproduce_parser,
    _add_deploy_local_parser,
    _add_data_parser,
    add_samples_parser,
    add_presets_parser,
)  # in the order ``diversefl --help`` lists them


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(
        prog="diversefl",
        description="Byzantine-robust federated learning on non-IID data (DiverseFL).",
    )
    p.add_argument(
        "--version", action=VersionAction, help="print the diversefl, torch and python versions"
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``diversefl`` console script. Errors a user can fix print one line
    (exit 2); ``DIVERSEFL_TRACEBACK=1`` shows the full traceback instead (for bug reports)."""
    from diversefl.aggregators import AggregatorError
    from diversefl.config import ConfigError
    from diversefl.data.datasets import DataError
    from diversefl.results import RunDirError

    argv = sys.argv[1:] if argv is None else list(argv)
    previous = warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, fallback=previous)
    traceback = os.environ.get("DIVERSEFL_TRACEBACK", "0") not in ("", "0")
    try:
        if argv[:1] == ["deploy-local"]:  # every further argument belongs to the deploy command
            return cmd_deploy_local(argparse.Namespace(args=argv[1:]))
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as err:
        if traceback:
            raise
        advice = getattr(err, "advice", None) or {
            # cmd_run names the run folder once a run has started (cli_hints.resume_advice)
            "run": ": nothing was written yet; run the same command again",
            "sweep": ": run the same command again to continue (finished cells are kept)",
            "reproduce": ": run the same command again to continue (finished runs are kept)",
            "deploy-local": ": a Flower run continues with the run-config key resume=true "
            "(docs/flower.md)",
        }.get(argv[0] if argv else "", "")
        _error(f"interrupted{advice}")
        return 130
    except (
        ConfigError,
        DataError,
        RunDirError,
        AggregatorError,
        ValueError,
        FileNotFoundError,
    ) as err:
        if traceback:
            raise
        _error(str(err))
        return 2
    except ModuleNotFoundError as err:  # an optional dependency: the message says what to install
        if traceback or "pip install" not in str(err):
            raise
        _error(str(err))
        return 2
    except OSError as err:  # an unwritable --out, a file where a folder belongs, a full disk
        if traceback:
            raise
        hint = ""
        if err.errno == errno.ENOSPC:
            hint = (
                "; the files written before are intact: free some space and continue with "
                "--resume (a sweep: run it again)"
            )
        where = f": {err.filename}" if err.filename else " (DIVERSEFL_TRACEBACK=1 shows where)"
        _error(f"{err.strerror or err}{where}{hint}")
        return 2
    finally:
        warnings.showwarning = previous


_PACKAGE = Path(__file__).resolve().parent  # this package's source: its own warnings


def _show_warning(  # noqa: ANN001
    message, category, filename, lineno, file=None, line=None, *, fallback
) -> None:
    """The library's own warnings (UserWarning) as one ``warning:`` line, without the source
    line Python shows; others go to the handler that was installed before (``fallback``)."""
    if issubclass(category, UserWarning) and Path(str(filename)).resolve().is_relative_to(_PACKAGE):
        notes.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)
    else:
        fallback(message, category, filename, lineno, file, line)


def _error(text: str) -> None:
    """``error: text`` on stderr, the text shown as written (brackets are not markup)."""
    notes.print(f"[red]error:[/] {escape(text)}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
