"""The `etrmtrm` command line: parse, load the config, call one library function, render, map errors to
exit codes: 0 success, 1 a wrong input (a key, value, option or file) or another handled error, or a failed
diagnose check, 3 a diagnose warning, 130 a training run interrupted (it saved a checkpoint to resume from, unless
stopped a second time)."""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from etrmtrm_cli import __version__, render
from etrmtrm_cli.allocator import AllocatorChoiceError, reexec_with_tcmalloc
from etrmtrm_cli.config import Experiment
from etrmtrm_cli.errors import ConfigError, EtrmtrmError, PeerFailed, RunError
from etrmtrm_cli.experiments_file import ExperimentsFile, Run, load_experiments, split_repeats
from etrmtrm_cli.run_checks import check_planned
from etrmtrm_cli.train_command import train_arguments

if TYPE_CHECKING:
    from etrmtrm_cli.training.loop import StopFlag


class _Commands(TyperGroup):
    """click exits 2 on a value or option it checks itself (`--max-steps 0`, `--no-such-flag`, no command at all);
    here a wrong input exits 1 wherever it is found, so that a script needs one test for it. typer raises its own
    copy of click's UsageError, so the exit code is mapped, not the exception: no command of ours exits 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except SystemExit as done:
            raise SystemExit(1 if done.code == USAGE_EXIT else done.code) from None


USAGE_EXIT = 2  # click's UsageError.exit_code

app = typer.Typer(
    cls=_Commands,
    help="ETRM vs ETRMTRM: run the overfit-phase experiments of the research plan from experiments.toml.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ExperimentsPath = Annotated[
    Path, typer.Option("--experiments", "-e", help="The experiments file.", dir_okay=False)
]
ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="A profile of the experiments file (paper, cpu, headroom, tiny) or "
                                           "auto: paper on CUDA, cpu otherwise.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key, validated like the file: --set arch.halt_max_steps=8."),
]


def handles_errors(fn: F) -> F:
    """Turn the library's errors into one red line on stderr and exit code 1, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PeerFailed:  # the process that failed has said why
            raise typer.Exit(1) from None
        except EtrmtrmError as err:
            for line in str(err).splitlines():  # escaped: "pip install 'etrmtrm[plot]'" must keep its brackets
                err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as err:  # a file the library did not expect to fail: still one line, no traceback
            where = f"{err.filename}: " if err.filename else ""
            err_console.print(f"[bold red]error:[/] {escape(where + (err.strerror or str(err)))}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def repeats_line(repeats: Sequence[tuple[Experiment, Experiment]]) -> str:
    """One line for the runs that `split_repeats` left out."""
    each = ", ".join(f"{a.id} seed {a.seed} ({b.id}'s)" for a, b in repeats)
    return (f"not trained, each the configuration and seed of an earlier run here, which it would repeat bit for bit "
            f"(compare reads that experiment's runs for it): {each}")


def resolve_profile(profile: str) -> str:
    """`auto` -> `paper` on CUDA, `cpu` otherwise (and say so)."""
    if profile != "auto":
        return profile
    import torch

    chosen = "paper" if torch.cuda.is_available() else "cpu"
    err_console.print(f"[dim]profile auto -> {chosen} ({'CUDA found' if chosen == 'paper' else 'no CUDA'})[/]")
    return chosen


def load_one(
    experiments: Path, name: str, profile: str, overrides: list[str] | None
) -> tuple[ExperimentsFile, Experiment]:
    file = load_experiments(experiments)
    return file, file.resolve(name, resolve_profile(profile), overrides or ())


def _version(value: bool) -> None:
    if value:
        console.print(f"etrmtrm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """ETRM vs ETRMTRM on ARC-AGI: train, diagnose and compare the plan's experiments."""


@app.command()
@handles_errors
def experiments(
    experiments: ExperimentsPath = Path("experiments.toml"),
    profile: ProfileOpt = "cpu",
) -> None:
    """List every experiment, its queue, and how it differs from the base."""
    file = load_experiments(experiments)
    resolved = {exp_id: file.resolve(exp_id, profile) for exp_id in file.ids}
    base = file.resolve_base(profile)
    console.print(render.experiments_table(file, resolved, base))


@app.command()
@handles_errors
def validate(
    experiments: ExperimentsPath = Path("experiments.toml"),
) -> None:
    """Check that every experiment and queue in the file is valid under every profile."""
    file = load_experiments(experiments)
    if not file.profiles:
        raise ConfigError(f"{experiments}: defines no [profiles.<name>] table (e.g. paper, cpu, tiny)")
    for profile in file.profiles:
        for exp_id in file.ids:
            file.resolve(exp_id, profile)
    console.print(
        f"[green]ok[/] {experiments}: {len(file.ids)} experiments, {len(file.queues)} queues, "
        f"profiles {', '.join(file.profiles)}"
    )


@app.command()
@handles_errors
def data(
    experiment: Annotated[str, typer.Argument(help="The experiment whose data to show.")] = "E0b",
    experiments: ExperimentsPath = Path("experiments.toml"),
    profile: ProfileOpt = "auto",
    overrides: SetOpt = None,
) -> None:
    """Show what an experiment trains and evaluates on, and draw one training example."""
    from etrmtrm_cli.data import build_arc_data, summarize

    _, exp = load_one(experiments, experiment, profile, overrides)
    arc = build_arc_data(exp.data, exp.seed)
    console.print(render.data_table(exp, summarize(arc)))
    batch = arc.train_batch(0, exp.train.batch_size)
    console.print(render.example_panel(batch, 0, arc.canvas_size, arc.groups[int(batch.group_ids[0])].task.id))


@app.command()
@handles_errors
def encoders() -> None:
    """List the registered encoders: recurrent or not, their settings with defaults, where they come from."""
    from etrmtrm_cli.encoders.registry import list_encoders

    console.print(render.encoders_table(list_encoders()))


@app.command()
@handles_errors
def train(
    target: Annotated[str, typer.Argument(help="An experiment ID (E0b) or a queue (week1).")],
    experiments: ExperimentsPath = Path("experiments.toml"),
    profile: ProfileOpt = "auto",
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the run from its latest checkpoint.")] = False,
    force: Annotated[bool, typer.Option(help="Start over; the old run directory is moved aside.")] = False,
    max_steps: Annotated[int | None, typer.Option(
        min=1, max=10**9, help="Stop after N steps instead of the epochs' count.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<ID>/ live.")] = Path("runs"),
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the model; default: when the run is >= 1000 steps long (a "
        "resumed one too, whatever it has left) and a compiler is present.", show_default=False)] = None,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard events.")] = False,
    wandb: Annotated[bool, typer.Option("--wandb", help="Also log to Weights & Biases.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final summary.")] = False,
    seeds: Annotated[str | None, typer.Option(
        help="Run several seeds, each into runs/<ID>/seed-<N>/: a count (5: seeds 0-4) or a list (0,3,7; '3,' "
             "is seed 3 alone). A pretrained decoder (P0) is trained once, not per seed.")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, max=4096, help="CPU threads (torch.set_num_threads); default: torch's. A sweep sets it per job.",
        show_default=False)] = None,
) -> None:
    """Train an experiment, or every experiment of a queue in order (finished runs are skipped).

    Multi-process: torchrun --nproc-per-node N -m etrmtrm_cli train E0b
    """
    from etrmtrm_cli.rundir import (
        metrics_path,
        read_metrics,
        run_path,
        run_status,
    )
    from etrmtrm_cli.training.distributed import init_distributed, shutdown_distributed
    from etrmtrm_cli.training.loop import StopFlag, TrainOptions
    from etrmtrm_cli.training.loop import train as run_training

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    ctx = init_distributed(os.environ, device)

    def plan() -> tuple[list[Run], list[tuple[Experiment, Experiment]], list[str], bool]:
        """The jobs, each checked before any run of a queue starts; the repeats left out; notes; a queue?"""
        if resume and force:
            raise ConfigError("--resume and --force: one goes on from the checkpoint, the other starts over; "
                              "choose one")
        file = load_experiments(experiments)
        jobs = file.jobs(target, resolve_profile(profile), overrides or (), parse_seeds(seeds), ctx.world_size)
        queued = len(jobs) > 1  # a queue skips finished runs and continues interrupted ones
        jobs, repeats = split_repeats(jobs, has_runs=lambda exp_id: (runs_dir / exp_id).exists())
        notes = check_planned(
            [(exp, per_seed, run_path(runs_dir, exp.id, exp.seed if per_seed else None)) for exp, per_seed in jobs],
            max_steps, ctx.device, lambda exp, per_seed: _train_command(
                exp, experiments, runs_dir, overrides or [], max_steps, per_seed, ctx.world_size, ctx.local_world_size),
            skips_finished=queued, force=force)
        return jobs, repeats, notes, queued

    stop = StopFlag()
    try:
        # Every rank reads the same files: a wrong one is said once, by rank 0 (DistContext.together)
        jobs, repeats, notes, queue = ctx.together(plan)
        if repeats and ctx.is_main:
            console.print(f"[dim]{repeats_line(repeats)}[/]", highlight=False)
        for note in notes if ctx.is_main else ():
            err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
        options = TrainOptions(runs_dir=runs_dir, max_steps=max_steps, resume=resume, force=force, compile=compile,
                               tensorboard=tensorboard, wandb=wandb)
        with stop_on_signals(stop, say=ctx.is_main):
            for exp, per_seed in jobs:
                run_options = replace(options, per_seed=per_seed)
                run_dir = run_path(runs_dir, exp.id, exp.seed if per_seed else None)
                if queue:
                    status = run_status(run_dir)
                    if status == "finished" and not force:
                        if ctx.is_main:
                            console.print(f"[dim]{exp.id}: finished run in {run_dir}, skipped[/]")
                        continue
                    if status == "unsaved" and ctx.is_main:
                        console.print(f"[dim]{exp.id}: stopped before its first checkpoint; "
                                      f"moved aside, starting over[/]")
                    run_options = replace(run_options, resume=status == "resumable" and not force,
                                          force=force or status == "unsaved")
                again = _train_command(exp, experiments, runs_dir, overrides or [], max_steps, per_seed,
                                       ctx.world_size, ctx.local_world_size)
                run_options = replace(run_options, command=again)
                try:
                    with render.TrainProgress(console, quiet=quiet or not ctx.is_main) as progress:
                        summary = run_training(exp, run_options, ctx, progress.on_event, stop)
                except KeyboardInterrupt:  # a second signal: stopped at once, mid-step
                    saved = run_status(run_dir) in ("resumable", "finished")
                    said = ("stopped at once; continue from the last checkpoint with: {} --resume" if saved else
                            "stopped at once, before its first checkpoint; start it over with: {} --force")
                    if ctx.is_main:
                        err_console.print(said.format(again), soft_wrap=True, highlight=False, markup=False)
                    raise typer.Exit(130) from None
                if ctx.is_main:
                    rows = read_metrics(metrics_path(summary.run_dir))
                    console.print(render.summary_line(summary, rows))
                if summary.status != "finished":
                    if ctx.is_main:
                        err_console.print(f"interrupted at step {summary.step}; continue with: {again} --resume",
                                          soft_wrap=True, highlight=False, markup=False)
                    raise typer.Exit(130)
    finally:
        shutdown_distributed()


MAX_SEEDS = 1000  # a count beyond it is a typo: a plan of a billion runs would fill the memory before any ran


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """`--seeds 5` -> seeds 0..4; `--seeds 0,3,7` -> those (`--seeds 3,` is seed 3 alone); None -> no seed axis."""
    if text is None:
        return None
    parts = text.removesuffix(",").split(",")  # "3," is the list of seed 3
    try:
        if "," in text:
            seeds = tuple(int(part) for part in parts)
        elif int(text) > MAX_SEEDS:
            raise ConfigError(f"--seeds {text}: at most {MAX_SEEDS} seeds at a time")
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (5) or a list of seeds (0,3,7)") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > 2**32 - 1:
        raise ConfigError(f"--seeds {text!r}: expected distinct seeds in [0, 2**32), at least one")
    return seeds


def _train_command(exp: Experiment, experiments: Path, runs_dir: Path, overrides: list[str],
                   max_steps: int | None, per_seed: bool = False, world_size: int = 1,
                   local_world_size: int | None = None) -> str:
    """`etrmtrm train` for this run as it was started (profile, file, runs directory, overrides; under torchrun
    with as many processes per node and nodes, which a resume needs): the base of every command the tool advises,
    so that the advice works as printed (a launch over several nodes also needs its rendezvous options)."""
    local = local_world_size or world_size
    nodes = ["--nnodes", str(world_size // local)] if local != world_size else []
    launch = ["torchrun", *nodes, "--nproc-per-node", str(local), "-m", "etrmtrm_cli"] if world_size > 1 else \
        ["etrmtrm"]
    return shlex.join([*launch, *train_arguments(exp.id, exp.profile, experiments, runs_dir, overrides, max_steps,
                                                 exp.seed if per_seed else None)])


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag, say: bool = True) -> Iterator[None]:
    """Ctrl-C / SIGTERM: finish the current step, save a checkpoint, return. A second Ctrl-C aborts. `say`: print
    that it stops (one process of a torchrun launch does)."""

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        if say:
            err_console.print(f"[yellow]{signal.Signals(signum).name}: finishing this step, then saving a "
                              "checkpoint[/]")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command()
@handles_errors
def diagnose(
    experiment: Annotated[str | None, typer.Argument(
        help="The experiment whose model to check (E0b when left out); with --run, the run's.")] = None,
    check: Annotated[str, typer.Option(
        "--check", "-c", help="carry-reset | gradient-flow | encoder-variance | determinism | context-use (with "
                              "--run) | all")] = "all",
    run: Annotated[Path | None, typer.Option(
        "--run", help="Check this run (its config.json and final weights, else its latest checkpoint's) "
        "instead of a fresh model.",
        file_okay=False)] = None,
    experiments: ExperimentsPath = Path("experiments.toml"),
    profile: ProfileOpt = "auto",
    overrides: SetOpt = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "cpu",
) -> None:
    """Check a model for the plan's failure modes: carry not reset, encoder without gradient, collapse, nondeterminism.

    Without --run: a fresh model of EXPERIMENT at --profile (tiny takes about 10-20 s), without decoder weights.
    With --run, also context-use: whether the run's answers change when its queries read another task's demos.

    Exit code 0 when every check passes, 1 when one fails, 3 when there are only warnings.
    """
    from etrmtrm_cli import report_render
    from etrmtrm_cli.analysis.diagnose import exit_code, fresh_subject, parse_checks, run_checks, run_subject
    from etrmtrm_cli.training.distributed import pick_device

    checks = parse_checks(check, with_run=run is not None)
    chosen = pick_device(device)
    if run is not None:
        if overrides or profile != "auto":
            raise ConfigError(f"{'--set' if overrides else '--profile'} cannot be combined with --run: the run's "
                              "config.json is what is checked")
        subject = run_subject(run, chosen)
        if experiment is not None and experiment != subject.exp.id:
            raise ConfigError(f"--run {run} is a run of {subject.exp.id}, not {experiment}: leave the experiment "
                              "out with --run")
    else:
        subject = fresh_subject(load_one(experiments, experiment or "E0b", profile, overrides)[1], chosen)
    console.print(f"[dim]checking {subject.source}[/]", highlight=False)
    results = run_checks(subject, checks)
    for result in results:
        console.print(report_render.check_table(result))
    console.print(report_render.diagnose_summary(subject.exp.id, results), highlight=False)
    raise typer.Exit(exit_code(results))


@app.command()
@handles_errors
def compare(
    runs: Annotated[list[str], typer.Argument(
        help="The experiments whose runs to compare, or queues of the experiments file: E0a E0b week2 ...")],
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<ID>/ live.")] = Path("runs"),
    experiments: Annotated[Path, typer.Option(
        "--experiments", "-e", help="The experiments file whose queues expand (where it exists).",
        dir_okay=False)] = Path("experiments.toml"),
    markdown: Annotated[Path | None, typer.Option(
        "--markdown", help="Also write the report as Markdown (e.g. results/overfit-cpu.md).", dir_okay=False)] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also plot the training curves into this PNG (needs pip install 'etrmtrm\\[plot]').",
        dir_okay=False)] = None,
    per_puzzle: Annotated[bool, typer.Option(
        "--per-puzzle", help="Per-task accuracy of two experiments side by side, over their seeds (and in how many "
                            "the task is solved: pass@2, the eval's views voting): evaluates every finished seed's "
                            "final model.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (for --per-puzzle)")] = "cpu",
) -> None:
    """The plan's comparison matrix, trivial baselines, config differences and verdict (scenarios A-D, red flags).

    Reads only the runs' files (config.json, meta.json, metrics.jsonl, summary.json). A name that is a queue of
    the experiments file stands for its experiments; any other name is a run directory's.

    --per-puzzle is the one option that runs the models: it evaluates both runs' final weights.
    """
    from etrmtrm_cli import report_plot, report_render
    from etrmtrm_cli.analysis.compare import compare_runs, stand_ins
    from etrmtrm_cli.analysis.per_task import per_task_accuracy, per_task_table, pool_seeds
    from etrmtrm_cli.training.distributed import pick_device

    if plot is not None:
        report_plot.require_matplotlib()
    for option, path, suffix in (("--plot", plot, ".png"), ("--markdown", markdown, None)):
        if path is not None:
            _check_report_path(option, path, suffix)
    standing_in: dict[str, str] = {}
    if experiments.is_file():
        file = load_experiments(experiments)
        runs = [exp_id for name in runs for exp_id in file.queues.get(name, (name,))]
        for name in runs:  # neither a run here nor a name of the file: most likely a typo, which the file can name
            if not (runs_dir / name).exists() and name not in file.experiments:
                try:
                    file.targets(name)
                except ConfigError as err:
                    raise ConfigError(f"{runs_dir / name}: no such run, and {err}") from None
        standing_in = stand_ins(file, runs_dir, runs)
    if per_puzzle and len(runs) != 2:
        raise ConfigError(f"--per-puzzle shows two experiments side by side; got {len(runs)}: {' '.join(runs)}")
    if per_puzzle and len({standing_in.get(name, name) for name in runs}) < 2:
        raise ConfigError(f"--per-puzzle: {' and '.join(runs)} are one configuration, read from the same runs "
                          f"({', '.join(f'{a} stands for {b}' for a, b in standing_in.items())}): nothing to set "
                          "side by side")
    result = compare_runs(runs_dir, runs, stand_ins=standing_in)
    for renderable in report_render.comparison_renderables(result):
        console.print(renderable)
    per_task = []
    if per_puzzle:
        chosen = str(pick_device(device))
        counted = [result.counted_runs(name) for name in runs]  # finished runs, one per seed, as in every mean
        if missing := [name for name, found in zip(runs, counted, strict=True) if not found]:
            raise RunError(f"--per-puzzle evaluates finished runs only; {', '.join(missing)} has none yet")
        pooled = [pool_seeds([per_task_accuracy(r, chosen) for r in found]) for found in counted]
        per_task = per_task_table(*pooled)
        console.print(report_render.per_task_table(per_task, (runs[0], runs[1])))
    if plot is not None:
        report_plot.plot_curves(result, plot)
        console.print(f"[green]wrote[/] {plot}", highlight=False)
    if markdown is not None:
        markdown.write_text(report_render.comparison_markdown(result, markdown, plot, per_task), encoding="utf-8")
        console.print(f"[green]wrote[/] {markdown}", highlight=False)


# What an earlier report of each option begins with: only such a file is replaced (a report written again).
REPORT_STARTS = {"--markdown": b"# Comparison: ", "--plot": b"\x89PNG\r\n\x1a\n"}


def _check_report_path(option: str, path: Path, suffix: str | None) -> None:
    """Before anything is written: a report never lands in a run's directory (it would replace the run's files) nor
    replaces a file that is not an earlier report (the experiments file, notes), a PNG's name says so, and its
    folder can be made."""
    from etrmtrm_cli.rundir import CONFIG, SUMMARY

    if suffix and path.suffix.lower() != suffix:
        raise ConfigError(f"{option} {path}: the file is written as {suffix[1:].upper()}; give a name ending in "
                          f"{suffix}")
    for folder in path.resolve().parents:
        if (folder / CONFIG).is_file() or (folder / SUMMARY).is_file():
            raise RunError(f"{option} {path}: inside the run directory {folder}, whose files it could replace; "
                           "write the report elsewhere")
    if path.exists() and not (path.is_file() and path.stat().st_size == 0) and not _starts_with(
            path, REPORT_STARTS[option]):  # an empty file (mktemp's) holds nothing to lose
        what = "a Markdown report of `compare`" if option == "--markdown" else "a PNG"
        raise RunError(f"{option} {path}: exists and is not {what}, which is all a report replaces; give another "
                       "name or move the file away")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot make its folder {path.parent} ({err.strerror})") from None


def _starts_with(path: Path, start: bytes) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(start)) == start
    except OSError:  # a folder, or unreadable: not a report
        return False


@app.command("export")
@handles_errors
def export(
    runs: Annotated[list[str], typer.Argument(
        help="The experiments or queues whose finished runs to export: P0 E0a week2 ... (as `sweep` takes them).")],
    to: Annotated[Path, typer.Option("--to", help="Where the records go (e.g. results/records/cpu).", file_okay=False)],
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<ID>/ live.")] = Path("runs"),
    weights: Annotated[bool, typer.Option(
        "--weights", help="Also export the final weights (for a decoder later runs start from, e.g. P0).")] = False,
    experiments: ExperimentsPath = Path("experiments.toml"),
) -> None:
    """Export finished runs as records: config, meta, summary and gzipped metrics, no checkpoints.

    `compare --runs-dir DIR` and `status --runs-dir DIR` read the records as they read runs; copied into another
    machine's runs directory, they let a sweep skip the runs they hold. Unfinished runs are left out, and so are
    experiments without a run yet: the sweep's own targets export what it has finished so far. An experiment whose
    configuration another's runs trained (E2b, E0b's) exports those runs, which `compare` reads for it.
    """
    from etrmtrm_cli.analysis.compare import stand_ins
    from etrmtrm_cli.run_export import export_runs

    file = load_experiments(experiments)
    named = list(dict.fromkeys(exp_id for name in runs for exp_id in file.targets(name)))
    # E2b, which a queue with E0b leaves out: E0b's runs are its runs, and a record of E2b needs them
    standing_in = stand_ins(file, runs_dir, named)
    exp_ids = list(dict.fromkeys(standing_in.get(exp_id, exp_id) for exp_id in named))
    for exp_id, original in standing_in.items():
        console.print(f"[dim]no run of its own[/] {runs_dir / exp_id}: {original}'s runs stand for it"
                      f"{'' if original in named else ', exported with them'}", highlight=False)
    for item in export_runs(runs_dir, exp_ids, to, weights=weights):
        style = {"not finished": "yellow", "no run yet": "dim"}.get(item.action, "green")
        console.print(f"[{style}]{item.action}[/] {item.source} -> {item.dest}", highlight=False)


# Output into a pipe or a file has no terminal width, and rich would fit it into 80 columns, cutting the
# figures of a comparison short ("81…"); it gets room for the widest report instead. COLUMNS still decides.
PIPE_WIDTH = 200


def main() -> None:
    try:
        reexec_with_tcmalloc()  # returns where it does not re-execute (see allocator.py)
    except AllocatorChoiceError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        raise SystemExit(1) from None
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    app()


from etrmtrm_cli import cli_sweep  # noqa: E402, F401  (registers `sweep` and `status` on the app)
