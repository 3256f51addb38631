"""The `etrmtrm` command line: parse, load the config, call one library function, render, map errors to
exit codes (0 success, 1 a handled error, 2 a usage error)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from etrmtrm_cli import __version__, render
from etrmtrm_cli.config import Experiment, ExperimentsFile, load_experiments
from etrmtrm_cli.errors import ConfigError, EtrmtrmError

app = typer.Typer(
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
    str, typer.Option("--profile", "-p", help="paper | cpu | tiny | auto (paper on CUDA, cpu otherwise).")
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
        except EtrmtrmError as err:
            for line in str(err).splitlines():
                err_console.print(f"[bold red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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
        raise ConfigError(f"{experiments}: defines no [profiles.<name>] table (paper, cpu, tiny)")
    for profile in file.profiles:
        for exp_id in file.ids:
            file.resolve(exp_id, profile)
    console.print(
        f"[green]ok[/] {experiments}: {len(file.ids)} experiments, {len(file.queues)} queues, "
        f"profiles {', '.join(file.profiles)}"
    )


@app.command()
@handles_errors
def encoders() -> None:
    """List the registered encoders: recurrent or not, their settings with defaults, where they come from."""
    from etrmtrm_cli.encoders.registry import list_encoders

    console.print(render.encoders_table(list_encoders()))


def main() -> None:
    app()

