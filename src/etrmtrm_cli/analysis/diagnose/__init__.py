"""`etrmtrm diagnose`: check a model for the failure modes the research plan names (its "If E0b fails"
list: carry reset logic, gradient flow to the encoder, encoder output variance), for determinism, and (a
trained run only) whether its answers use the demos at all.

Each check (one module each) builds what it needs (a fresh model at the experiment's profile, or a run's
judged weights), drives it on real batches of the experiment's data and returns a `CheckResult`; nothing
here prints. The CLI exits 0 when every check passes, 1 when one fails, 3 when there are only warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from etrmtrm_cli.analysis.diagnose.carry_reset import check_carry_reset
from etrmtrm_cli.analysis.diagnose.context_use import check_context_use
from etrmtrm_cli.analysis.diagnose.determinism import check_determinism
from etrmtrm_cli.analysis.diagnose.encoder_variance import check_encoder_variance
from etrmtrm_cli.analysis.diagnose.gradient_flow import check_gradient_flow
from etrmtrm_cli.analysis.diagnose.subject import CheckResult, Measurement, Subject, fresh_subject, run_subject
from etrmtrm_cli.errors import ConfigError

CHECKS = ("carry-reset", "gradient-flow", "encoder-variance", "determinism", "context-use")
RUN_ONLY = ("context-use",)  # judged on a trained run's answers; `all` without --run leaves them out
__all__ = ["CHECKS", "CheckResult", "Measurement", "Subject", "check_carry_reset", "check_context_use",
           "check_determinism",
           "check_encoder_variance", "check_gradient_flow", "exit_code", "fresh_subject", "parse_checks",
           "run_checks", "run_subject"]


def parse_checks(name: str, with_run: bool) -> tuple[str, ...]:
    if name == "all":
        return CHECKS if with_run else tuple(c for c in CHECKS if c not in RUN_ONLY)
    if name not in CHECKS:
        raise ConfigError(f"--check {name!r}: unknown check; valid: {', '.join(CHECKS)}, all")
    if name in RUN_ONLY and not with_run:
        raise ConfigError(f"--check {name} judges a trained model's answers: give the run, --run runs/<ID> "
                          "(or runs/<ID>/seed-<N>)")
    return (name,)


def run_checks(subject: Subject, checks: Sequence[str]) -> list[CheckResult]:
    table: dict[str, Callable[[Subject], CheckResult]] = {
        "carry-reset": check_carry_reset, "gradient-flow": check_gradient_flow,
        "encoder-variance": check_encoder_variance, "determinism": check_determinism,
        "context-use": check_context_use,
    }
    return [table[name](subject) for name in checks]


def exit_code(results: Sequence[CheckResult]) -> int:
    statuses = {r.status for r in results}
    return 1 if "fail" in statuses else 3 if "warn" in statuses else 0
