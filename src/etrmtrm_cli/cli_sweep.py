"""`etrmtrm sweep` and `etrmtrm status`: experiments x seeds as jobs (submitit: local processes or SLURM), and
where every run stands. Registered on cli.py's app."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from etrmtrm_cli import sweep_render
from etrmtrm_cli.analysis.text import duration
from etrmtrm_cli.cli import (
    ExperimentsPath,
    ProfileOpt,
    SetOpt,
    _train_command,
    app,
    console,
    err_console,
    handles_errors,
    parse_seeds,
    repeats_line,
    resolve_profile,
)
from etrmtrm_cli.config import SweepConfig
from etrmtrm_cli.errors import ConfigError, RunError, first_line
from etrmtrm_cli.experiments_file import ExperimentsFile, load_experiments, sweep_config
from etrmtrm_cli.run_checks import check_planned

if TYPE_CHECKING:
    from etrmtrm_cli.sweep_status import RunRow

SLURM_ONLY = ("partition", "gpus_per_job", "cpus_per_job", "mem_gb", "array_parallelism")  # the SLURM panel's options
_SLURM = "SLURM settings (also from the \\[sweep] table of experiments.toml)"


@app.command()
@handles_errors
def sweep(
    targets: Annotated[list[str], typer.Argument(help="Experiments and queues: week1, or E0a E0b ...")],
    seeds: Annotated[str | None, typer.Option(
        help="Seeds per experiment: a count (3: seeds 0-2) or a list (0,3,7); each run in runs/<ID>/seed-<N>/. "
             "A decoder others start from (P0) is trained once.")] = None,
    experiments: ExperimentsPath = Path("experiments.toml"),
    profile: ProfileOpt = "auto",
    overrides: SetOpt = None,
    max_steps: Annotated[int | None, typer.Option(
        min=1, max=10**9, help="Stop each run after N steps instead of the epochs' count.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (where each job runs)")] = "auto",
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<ID>/ live.")] = Path("runs"),
    compile: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="As `train`; default: auto.", show_default=False)] = None,
    executor: Annotated[str | None, typer.Option(
        help="auto (SLURM when `sinfo` answers, else local) | local | slurm. Default: \\[sweep] or auto.",
        show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option(
        help="Local: runs at once; the cores are split between them. Default: \\[sweep] or 1.",
        show_default=False)] = None,
    time_min: Annotated[int | None, typer.Option(
        help="Time limit per job, minutes (SLURM default 1440; local: none). A job at its limit saves a "
             "checkpoint and is requeued.", show_default=False)] = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.", rich_help_panel=_SLURM)] = None,
    gpus_per_job: Annotated[int | None, typer.Option(help="SLURM: GPUs per job.", rich_help_panel=_SLURM)] = None,
    cpus_per_job: Annotated[int | None, typer.Option(
        help="SLURM: cores per job (its threads).", rich_help_panel=_SLURM)] = None,
    mem_gb: Annotated[float | None, typer.Option(help="SLURM: memory per job.", rich_help_panel=_SLURM)] = None,
    array_parallelism: Annotated[int | None, typer.Option(
        help="SLURM: array tasks running at once.", rich_help_panel=_SLURM)] = None,
    folder: Annotated[Path | None, typer.Option(
        help="submitit's folder (job logs, records); default <runs-dir>/.submitit. On a cluster: a shared disk.",
        file_okay=False, show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the jobs, their optimizer steps and compute at each profile; submit nothing.")] = False,
) -> None:
    """Train experiments x seeds as jobs: local processes (--jobs N at once) or SLURM job arrays, via submitit.

    Finished runs are skipped, stopped ones resume, a failed job does not stop the others, runs that start
    from P0 wait for it (trained once). Watch it with `etrmtrm status`.
    """
    from etrmtrm_cli import sweep as sw
    from etrmtrm_cli.sweep_status import SWEEP_FOLDER
    from etrmtrm_cli.training.distributed import check_device_name, pick_device

    file = load_experiments(experiments)
    given = {"executor": executor, "jobs": jobs, "time_min": time_min, "partition": partition,
             "gpus_per_job": gpus_per_job, "cpus_per_job": cpus_per_job, "mem_gb": mem_gb,
             "array_parallelism": array_parallelism}
    config = sweep_config({k: v for k, v in given.items() if v is not None}, "--{key}", base=file.sweep)
    check_device_name(device)  # here, not in each job: whether the nodes have it is theirs to say
    kind, why = sw.choose_executor(config.executor)
    chosen = _sweep_profile(profile, kind, config)
    threads = sw.local_threads(config.jobs) if kind == "local" else config.cpus_per_job
    folder = folder or runs_dir / SWEEP_FOLDER
    request = sw.SweepRequest(tuple(targets), experiments, chosen, tuple(overrides or ()), parse_seeds(seeds),
                              runs_dir, max_steps, device, compile)
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
    stop_timeout = max(5.0, config.signal_delay_s - 15.0)
    planned, repeats = sw.plan_sweep(file, request, folder, threads, sweep_id, stop_timeout)
    if repeats:
        console.print(f"[dim]{repeats_line(repeats)}[/]", highlight=False)
    here = pick_device(device) if kind == "local" else None  # the jobs' device; a SLURM job's machine is unknown
    notes = check_planned(  # before anything is submitted
        [(job.exp, job.spec.seed is not None, Path(job.spec.run_dir)) for job in planned], max_steps, here,
        lambda exp, per_seed: _train_command(exp, experiments, runs_dir, list(overrides or ()), max_steps, per_seed),
        states=[job.state for job in planned])
    for note in notes:
        err_console.print(f"[yellow]{escape(note)}[/]", highlight=False)
    where = (f"local: {config.jobs} at once, {threads} thread(s) each" if kind == "local" else
             f"SLURM: {threads or 'all allocated'} core(s), {config.gpus_per_job} GPU(s) per job")
    console.print(f"[dim]executor {kind} ({why}); {where}; submitit folder {folder}[/]", highlight=False)
    slurm_only = [f"--{key.replace('_', '-')}" for key in SLURM_ONLY if given[key] is not None]
    if kind == "local" and slurm_only:
        console.print(f"[yellow]{', '.join(slurm_only)}: SLURM settings, unused by the local executor[/]",
                      highlight=False)
    if kind == "slurm" and jobs is not None:
        console.print("[yellow]--jobs: a local setting, unused on SLURM (--array-parallelism limits the jobs "
                      "running at once)[/]", highlight=False)
    if dry_run:
        _dry_run(file, request, planned, folder, threads, kind, config)
        return
    if all(job.state == "finished" for job in planned):
        console.print(f"every run of the sweep is finished ({len(planned)}); nothing to do", highlight=False)
    if kind == "slurm":
        def executor_for(dependency: str | None) -> Any:
            made = sw.make_executor(kind, folder, config, threads)
            if dependency:
                made.update_parameters(slurm_dependency=dependency)
            return made

        from submitit.core.utils import FailedJobError

        try:
            sw.submit_slurm(planned, executor_for, _print_event)
        except FailedJobError as err:  # sbatch refused it: most often a setting the cluster does not have
            said = [line for line in str(err).splitlines() if "error" in line.lower()] or [first_line(err)]
            raise ConfigError(f"sbatch refused the job: {said[-1].strip()} (check --partition, --account, --qos, "
                              "--time-min, --mem-gb, --gpus-per-job against the cluster: `sinfo`)") from None
        console.print(f"submitted; watch with: etrmtrm status --runs-dir {runs_dir}", highlight=False)
        return
    sweep_lock = _one_local_sweep(folder)
    try:
        outcome = sw.run_local(planned, sw.make_executor(kind, folder, config, threads), config.jobs, _print_event)
    except KeyboardInterrupt:
        err_console.print("[yellow]stopping: each running job's run saves a checkpoint[/]")
        from etrmtrm_cli.sweep_status import wait_unlocked

        held = wait_unlocked([Path(job.spec.run_dir) for job in planned], timeout_s=stop_timeout + 30)
        still = f"; still saving: {', '.join(map(str, held))}" if held else ""
        err_console.print(f"stopped{still}. The same command resumes the sweep.", highlight=False)
        raise typer.Exit(130) from None
    finally:
        sweep_lock.release()
    planned_dirs = {job.spec.run_dir for job in planned}
    _print_rows(runs_dir, folder, "The sweep's runs", lambda row: str(row.run_dir) in planned_dirs)
    failed = [key for key, state in outcome.items() if state not in ("finished", "skipped")]
    if failed:
        err_console.print(f"[bold red]{len(failed)} of {len(planned)} runs did not finish:[/] {', '.join(failed)}",
                          highlight=False)
        raise typer.Exit(1)


def _one_local_sweep(folder: Path) -> Any:
    """The lock of the local sweep over a submitit folder, held while it runs: a second one would start the first
    one's queued runs as well (and `status` reads a queued run whose sweep holds no lock as stopped)."""
    from etrmtrm_cli.run_lock import LOCK, RunLock

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return RunLock(folder)
    except RunError:
        holder = (folder / LOCK).read_text(encoding="utf-8", errors="replace").strip() or "another process"
        raise RunError(f"another local sweep ({holder}) is running over these runs (its folder {folder}); wait for "
                       "it to end or stop it (Ctrl-C), then run this one: it skips what the other finished") from None


def _sweep_profile(profile: str, kind: str, config: SweepConfig) -> str:
    """`auto`: paper where the jobs get a GPU (SLURM with --gpus-per-job, or CUDA here), else cpu."""
    if profile == "auto" and kind == "slurm":
        chosen = "paper" if config.gpus_per_job else "cpu"
        err_console.print(f"[dim]profile auto -> {chosen} ({config.gpus_per_job} GPU(s) per job)[/]")
        return chosen
    return resolve_profile(profile)


def _print_event(kind: str, job: Any, detail: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    if kind == "skip":
        what = "finished run" if job.state == "finished" else "run written by another process"
        console.print(f"[dim]{stamp} {job.key}: {what}, skipped ({detail})[/]", highlight=False)
    elif kind == "queued":
        console.print(f"[dim]{stamp} {job.key}: {detail}[/]", highlight=False)
    elif kind == "start":
        console.print(f"{stamp} [cyan]{job.key}[/]: {sweep_render.ACTIONS.get(job.state, job.state)} ({detail})",
                      highlight=False)
    else:
        state = detail.split(":", 1)[0]
        style = sweep_render.STATE_STYLES.get(state, "")
        console.print(f"{stamp} [cyan]{job.key}[/]: [{style}]{detail}[/]" if style else f"{stamp} {job.key}: {detail}",
                      highlight=False, soft_wrap=True)


def _dry_run(file: ExperimentsFile, request: Any, planned: list[Any], folder: Path, threads: int | None, kind: str,
             config: SweepConfig) -> None:
    from etrmtrm_cli import sweep as sw
    from etrmtrm_cli import sweep_cost
    from etrmtrm_cli.rundir import run_dirs

    device = _estimate_device(request.device, kind, config)
    measured = sweep_cost.measured_runs(run_dirs(request.runs_dir))
    per_profile: dict[str, list[sweep_cost.Estimate]] = {}
    for profile in dict.fromkeys([request.profile, *file.profiles]):
        jobs = planned if profile == request.profile else sw.plan_sweep(
            file, replace(request, profile=profile), folder, threads, "dry-run")[0]
        per_profile[profile] = [sweep_cost.estimate(job.exp, sweep_cost.steps_of(job.exp, request.max_steps), device,
                                                    measured) for job in jobs]
    title = f"sweep {' '.join(request.targets)} at profile {request.profile} ({len(planned)} runs, {kind})"
    console.print(sweep_render.plan_table(planned, per_profile[request.profile], title))
    console.print(sweep_render.profile_table(per_profile, len(planned), request.profile))
    left = [e for job, e in zip(planned, per_profile[request.profile], strict=True)
            if job.state not in ("finished", "running")]
    seconds = sweep_cost.total_seconds(left)
    console.print(f"still to train at profile {request.profile}: {len(left)} of {len(planned)} runs, "
                  + (f"about {duration(seconds)} of steps here, one after another, plus a few seconds each to start"
                     if seconds is not None else "their time unknown here")
                  + " (the tables count every run, finished ones too)", highlight=False)
    console.print(f"[dim]dry run: nothing submitted. Time here is measured on {device} in {request.runs_dir} "
                  f"({len(measured)} run(s) measured); FLOPs count matmuls and attention of one step.[/]",
                  highlight=False)


def _estimate_device(device: str, kind: str, config: SweepConfig) -> str:
    if device != "auto":
        return device
    if kind == "slurm":
        return "cuda" if config.gpus_per_job else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _print_rows(runs_dir: Path, folder: Path | None, title: str, keep: Callable[[RunRow], bool]) -> None:
    from etrmtrm_cli.sweep_status import run_rows

    rows = [row for row in run_rows(runs_dir, folder) if keep(row)]
    console.print(sweep_render.status_table(rows, title))
    console.print(sweep_render.status_counts(rows), highlight=False)


@app.command()
@handles_errors
def status(
    runs: Annotated[list[str] | None, typer.Argument(
        help="Only these experiments or queues (as `sweep` takes them); every run when none.",
        show_default=False)] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where runs/<ID>/ live (as train, sweep and compare).")] = Path("runs"),
    folder: Annotated[Path | None, typer.Option(
        help="A sweep's submitit folder, if not <runs-dir>/.submitit.", file_okay=False, show_default=False)] = None,
    experiments: ExperimentsPath = Path("experiments.toml"),
) -> None:
    """Every run: experiment, seed, state (queued, running, finished, failed, stopped), step, train accuracy at the
    last step that logged one (compare's is over the last 10 % of steps), wall time, and for a failed one the log to
    read. Reads only files: works while a sweep runs and after."""
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: no such runs directory" + (" (it is a file)" if runs_dir.exists() else ""))
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"--folder {folder}: no such directory")
    wanted: set[str] = set()  # read only to expand names: status of a records directory needs no experiments file
    if runs:
        file = load_experiments(experiments)
        wanted = {exp_id for name in runs for exp_id in file.targets(name)}
    _print_rows(runs_dir, folder, f"Runs in {runs_dir}", lambda row: not wanted or row.exp_id in wanted)
