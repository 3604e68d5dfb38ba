"""Programs a second through the code sandbox against a bare `python -c` per program and a bubblewrap per program.

Every variant runs the same right program (a function and three asserts) on the same number of workers (threads that
each run one program at a time):

    sandbox       LocalSandbox: warm workers inside bubblewrap, a fork per program (what code_reward uses)
    python_c      subprocess `python -I -S -c "<program + tests>"` per program, no isolation at all
    bwrap_python  the sandbox's bubblewrap command line with `python -I -S -c "<program + tests>"` per program

Reported: programs a second and the per-program cost (wall time x workers / programs). Then a load check: a few
hundred right programs in one call, every one must score 1.0. The sandbox's workers are started before timing.

Usage:
    python benchmarks/bench_sandbox.py                    # 200 programs per variant, load check of 500, 2 workers
    python benchmarks/bench_sandbox.py --programs 50 --load 100
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_file import machine_description, write_section

from trl_shaped.sandbox import LocalSandbox, Program, SandboxLimits
from trl_shaped.sandbox.isolation import bwrap_command, python_executable

CODE = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(5, 5) == 10"]


def run_commands(commands: list[list[str]], workers: int) -> float:
    """Seconds to run every command with `workers` at once; each must exit 0."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        codes = list(pool.map(lambda c: subprocess.run(c, capture_output=True).returncode, commands))
    elapsed = time.perf_counter() - start
    assert codes == [0] * len(codes), f"{codes.count(0)}/{len(codes)} programs passed"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--load", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started, load_average = time.time(), os.getloadavg()[0]
    source = CODE + "\n".join(TESTS) + "\n"
    limits = SandboxLimits()
    sandbox = LocalSandbox(limits, workers=args.workers)
    sandbox.run_tests([Program(CODE, TESTS)] * args.workers)  # starts the workers
    timings = {}
    begin = time.perf_counter()
    outcomes = sandbox.run_tests([Program(CODE, TESTS)] * args.programs)
    timings["sandbox"] = time.perf_counter() - begin
    assert all(o.fraction == 1.0 for o in outcomes), outcomes
    bare = [python_executable(), "-I", "-S", "-c", source]
    timings["python_c"] = run_commands([bare] * args.programs, args.workers)
    wrapped = bwrap_command(0, limits.tmp_bytes)[:-5]  # without `python -I -S harness.py <settings>`
    timings["bwrap_python"] = run_commands(
        [[*wrapped, python_executable(), "-I", "-S", "-c", source]] * args.programs, args.workers
    )
    begin = time.perf_counter()
    load = sandbox.run_tests([Program(CODE, TESTS)] * args.load)
    load_seconds = time.perf_counter() - begin
    right = sum(o.fraction == 1.0 for o in load)
    sandbox.close()

    rows = [
        "| variant | programs/s | per-program cost (ms, x workers) | vs python_c |",
        "|---|---|---|---|",
    ]
    for name, seconds in timings.items():
        rate = args.programs / seconds
        cost = seconds * args.workers / args.programs * 1000
        rows.append(f"| {name} | {rate:.1f} | {cost:.1f} | {timings['python_c'] / seconds:.2f}x |")
    command = "python benchmarks/bench_sandbox.py " + " ".join(sys.argv[1:])
    body = "\n".join(
        [
            "## Code sandbox: programs a second (`benchmarks/bench_sandbox.py`)",
            "",
            f"Command: `{command.strip()}` ({time.time() - started:.0f} s)",
            "",
            f"Machine: {machine_description('cpu')}; load average {load_average:.1f} when it started (other "
            "processes share the cores: compare variants within one run).",
            "",
            f"{args.programs} runs of one right program (a function and 3 asserts) per variant on {args.workers} "
            "workers; `python_c` is a bare `python -I -S -c` per program (no isolation), `bwrap_python` the sandbox's "
            "bubblewrap command around `python -I -S -c` per program, `sandbox` the warm forking workers of "
            "`code_reward`.",
            "",
            *rows,
            "",
            f"Load check: {args.load} right programs in one call: {right}/{args.load} scored 1.0 "
            f"({args.load / load_seconds:.1f} programs/s).",
            "",
            f"Limits (defaults of `SandboxLimits`): {limits}.",
        ]
    )
    print(body)
    write_section("bench_sandbox", body)
    assert right == args.load, f"false results under load: {args.load - right} of {args.load}"


if __name__ == "__main__":
    main()
