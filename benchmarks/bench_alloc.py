"""glibc's malloc, as it is and tuned, against tcmalloc on one training step: `bench_step.py` under each,
alternating, in one run.

    python benchmarks/bench_alloc.py -- --encoder recurrent_standard --hidden 64 --heads 4 --layers 2 \
        --encoder-layers 2 --h-cycles 2 --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc --batch 32 \
        --steps 12 --warmup 3 --threads 2

Arguments after `--` go to every `bench_step.py`. `--parallel 2` (with `--threads 1` there) starts two at once
for each allocator, the way `etrmtrm sweep --jobs 2` runs on 2 cores. The allocators are set as `etrmtrm` itself
sets them (src/etrmtrm_cli/allocator.py): tcmalloc by LD_PRELOAD, the tuned glibc (`glibc-tuned`, what a run gets
where no tcmalloc is installed) by GLIBC_TUNABLES; `bench_step.py` is run directly, so nothing else sets them.
Prints each process's median step and peak RSS, then per allocator the mean of those medians and the ratios
glibc / tcmalloc and glibc / glibc-tuned (> 1: the other is faster). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from etrmtrm_cli.allocator import ENV, find_tcmalloc, library_dirs, reexec_env

HERE = Path(__file__).resolve().parent


def allocator_envs(library: Path) -> dict[str, dict[str, str]]:
    """The environment of each allocator's processes: plain glibc, the tuned glibc, tcmalloc."""
    plain = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD", "GLIBC_TUNABLES")}
    tuned = reexec_env({**plain, ENV: "system-tuned"}, "linux", library)
    tcmalloc = reexec_env(plain, "linux", library)
    assert tuned is not None and tcmalloc is not None
    return {"glibc": plain, "glibc-tuned": tuned, "tcmalloc": tcmalloc}


def run_round(name: str, env: dict[str, str], parallel: int, step_args: list[str]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, str(HERE / "bench_step.py"), *step_args, "--seed", str(i)],
                              env=env, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(parallel)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"bench_step.py failed under {name}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1, help="bench_step.py processes at once per allocator")
    parser.add_argument("step_args", nargs=argparse.REMAINDER, help="-- then bench_step.py's arguments")
    args = parser.parse_args()
    step_args = args.step_args[1:] if args.step_args[:1] == ["--"] else args.step_args
    library = find_tcmalloc(library_dirs())
    if library is None:
        raise SystemExit("no tcmalloc library found (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)")

    envs = allocator_envs(library)
    medians: dict[str, list[float]] = {name: [] for name in envs}
    rss: dict[str, list[float]] = {name: [] for name in envs}
    for round_ in range(1, args.rounds + 1):
        for name, env in envs.items():
            for result in run_round(name, env, args.parallel, step_args):
                medians[name].append(result["ms_median"])
                rss[name].append(result["peak_rss_mb"])
                print(f"round {round_} {name:11s} {result['ms_median']:8.1f} ms/step  peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB", flush=True)
    mean = {name: statistics.mean(values) for name, values in medians.items()}
    ratios = {other: round(mean["glibc"] / mean[other], 3) for other in ("tcmalloc", "glibc-tuned")}
    print("mean of medians: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in mean.items())
          + f"; tcmalloc {ratios['tcmalloc']:.2f}x, glibc-tuned {ratios['glibc-tuned']:.2f}x")
    print(json.dumps({"library": str(library), "ms_median": medians, "peak_rss_mb": rss, "ratio": ratios}))


if __name__ == "__main__":
    main()
