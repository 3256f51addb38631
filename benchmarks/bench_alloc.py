"""glibc's malloc against tcmalloc on one training step: `bench_step.py` under each, alternating, in one run.

    python benchmarks/bench_alloc.py -- --encoder recurrent_standard --hidden 64 --heads 4 --layers 2 \
        --encoder-layers 2 --h-cycles 2 --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc --batch 32 \
        --steps 12 --warmup 3 --threads 2

Arguments after `--` go to every `bench_step.py`. `--parallel 2` (with `--threads 1` there) starts two at once
for each allocator, the way `etrmtrm sweep --jobs 2` runs on 2 cores. The allocator is set by LD_PRELOAD, as
`etrmtrm` itself does (src/etrmtrm_cli/allocator.py); `bench_step.py` is run directly, so nothing else
preloads it. Prints each process's median step and peak RSS, then per allocator the mean of those medians
and the ratio glibc / tcmalloc (> 1: tcmalloc is faster). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from etrmtrm_cli.allocator import ENV, find_tcmalloc, library_dirs

HERE = Path(__file__).resolve().parent


def run_round(library: Path | None, parallel: int, step_args: list[str]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    if library is not None:
        env["LD_PRELOAD"] = str(library)
    procs = [subprocess.Popen([sys.executable, str(HERE / "bench_step.py"), *step_args, "--seed", str(i)],
                              env=env, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(parallel)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"bench_step.py failed under {library or 'glibc'}")
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

    medians: dict[str, list[float]] = {"glibc": [], "tcmalloc": []}
    rss: dict[str, list[float]] = {"glibc": [], "tcmalloc": []}
    for round_ in range(1, args.rounds + 1):
        for name, lib in (("glibc", None), ("tcmalloc", library)):
            for result in run_round(lib, args.parallel, step_args):
                medians[name].append(result["ms_median"])
                rss[name].append(result["peak_rss_mb"])
                print(f"round {round_} {name:8s} {result['ms_median']:8.1f} ms/step  peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB", flush=True)
    mean = {name: statistics.mean(values) for name, values in medians.items()}
    ratio = mean["glibc"] / mean["tcmalloc"]
    print(f"mean of medians: glibc {mean['glibc']:.1f} ms, tcmalloc {mean['tcmalloc']:.1f} ms; tcmalloc {ratio:.2f}x")
    print(json.dumps({"library": str(library), "ms_median": medians, "peak_rss_mb": rss, "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
