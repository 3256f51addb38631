"""Steps per second of this machine's cores as one run with all of them, against one run per core at once (the
way `etrmtrm sweep --jobs 2` runs on 2 cores), alternating, in one run.

    python benchmarks/bench_parallel.py --cores 2 -- --encoder recurrent_standard --hidden 64 --heads 4 \
        --layers 2 --encoder-layers 2 --h-cycles 2 --l-cycles 2 --canvas 10 --max-demos 7 --demos-used arc \
        --batch 32 --steps 20 --warmup 5 --compile

Arguments after `--` go to every `bench_step.py` (its `--threads` is set here: `--cores` for the one run, 1 for
each of the others). Under tcmalloc where the machine has it, as `etrmtrm` runs (bench_alloc.py starts them).
Throughput = processes / median step; the ratio is that of the parallel rounds' mean throughput to the single
ones' (> 1: one run per core gets more steps per hour). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench_alloc import run_round

from etrmtrm_cli.allocator import find_tcmalloc, library_dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("step_args", nargs=argparse.REMAINDER, help="-- then bench_step.py's arguments")
    args = parser.parse_args()
    step_args = args.step_args[1:] if args.step_args[:1] == ["--"] else args.step_args
    library = find_tcmalloc(library_dirs())
    layouts = {"single": (1, args.cores), "parallel": (args.cores, 1)}  # name -> (processes, threads each)
    throughput: dict[str, list[float]] = {name: [] for name in layouts}
    for round_ in range(1, args.rounds + 1):
        for name, (processes, threads) in layouts.items():
            medians = [r["ms_median"] for r in run_round(library, processes, [*step_args, "--threads", str(threads)])]
            throughput[name].append(sum(1000 / ms for ms in medians))
            print(f"round {round_} {name:8s} {processes} x {threads} thread(s): median step "
                  f"{', '.join(f'{ms:.1f}' for ms in medians)} ms, {throughput[name][-1]:.2f} steps/s", flush=True)
    mean = {name: statistics.mean(values) for name, values in throughput.items()}
    ratio = mean["parallel"] / mean["single"]
    print(f"mean steps/s: one run on {args.cores} threads {mean['single']:.2f}, {args.cores} runs on one thread each "
          f"{mean['parallel']:.2f}; {ratio:.2f}x")
    print(json.dumps({"allocator": str(library) if library else "glibc", "steps_per_s": throughput,
                      "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
