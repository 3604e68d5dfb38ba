"""Programs a second through the code sandbox against a bare `python -c` per program and a bubblewrap per program.

Every variant runs the same right program (a function and three asserts) on the same number of workers (threads that
each run one program at a time):

    sandbox       LocalSandbox: warm workers inside bubblewrap, a fork per program (what code_reward uses)
    sandbox_stdio the same, on the problem read from standard input (3 check_stdio tests: a fork per test)
    python_c      subprocess `python -I -S -c "<program + tests>"` per program, no isolation at all
    bwrap_python  the sandbox's bubblewrap command line with `python -I -S -c "<program + tests>"` per program

Reported: programs a second and the per-program cost (wall time x workers / programs). Then a load check: 1,000
programs in one call, half right and half wrong (a wrong result, an exception, a syntax error, and one in a hundred a
busy loop that runs to its limit, one a spawner of 31 busy sessions, one a hoarder of 6 x 700 MiB; a quarter of them
read standard input), while busy processes (CPU hogs, one per core by default) run on the host beside the sandbox; every right
program must score 1.0 and every wrong one 0.0 (misjudged programs are counted and must be 0). The sandbox's workers
are started before timing.

Usage:
    python benchmarks/bench_sandbox.py                    # 200 programs per variant, load check of 1000, 2 workers
    python benchmarks/bench_sandbox.py --programs 50 --load 100 --hogs 0
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
WRONG = [
    "def add(a, b):\n    return a - b\n",
    "def add(a, b):\n    raise ValueError(a)\n",
    "def add(a, b)\n    return a\n",
]
BUSY = "def add(a, b):\n    while True:\n        pass\n"  # wrong, and runs to its CPU or wall limit
# wrong programs that attack the machine: busy children in sessions of their own, and memory from several processes
SPAWNER = (
    "import os\nfor _ in range(31):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n            pass\n"
    "def add(a, b):\n    return a - b\n"
)
HOARDER = (
    "import os\nfor _ in range(6):\n    if os.fork() == 0:\n        block = bytearray(700 << 20)\n"
    "        block[::4096] = b'x' * len(block[::4096])\n        os._exit(0)\n"
    "def add(a, b):\n    return a - b\n"
)
# the same problem read from standard input: judged by its output, outside the program
STDIO_CODE = "a, b = map(int, input().split())\nprint(a + b)\n"
STDIO_WRONG = "a, b = map(int, input().split())\nprint(a - b)\n"
STDIO_TESTS = ["check_stdio('1 2\\n', '3\\n')", "check_stdio('-1 1\\n', '0\\n')", "check_stdio('5 5\\n', '10\\n')"]
HOG = "while True:\n    pass"


def load_programs(count: int) -> tuple[list[Program], list[float]]:
    """`count` programs, right and wrong alternating, every fourth pair read from standard input; the wrong ones
    cycle through WRONG, and one in a hundred programs is a busy loop, one a spawner of busy sessions, one a memory
    hoarder. Returns the programs and their true scores."""
    programs, truth = [], []
    for i in range(count):
        right = i % 2 == 0
        if (i // 2) % 4 == 3:
            programs.append(Program(STDIO_CODE if right else STDIO_WRONG, STDIO_TESTS))
        else:
            hostile = {1: BUSY, 3: SPAWNER, 5: HOARDER}.get(i % 100)
            programs.append(Program(CODE if right else hostile or WRONG[(i // 2) % len(WRONG)], TESTS))
        truth.append(1.0 if right else 0.0)
    return programs, truth


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
    parser.add_argument("--load", type=int, default=1000)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy processes beside the load check")
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
    begin = time.perf_counter()  # the same problem from standard input: a fork per test
    outcomes = sandbox.run_tests([Program(STDIO_CODE, STDIO_TESTS)] * args.programs)
    timings["sandbox_stdio"] = time.perf_counter() - begin
    assert all(o.fraction == 1.0 for o in outcomes), outcomes
    bare = [python_executable(), "-I", "-S", "-c", source]
    timings["python_c"] = run_commands([bare] * args.programs, args.workers)
    wrapped = bwrap_command(0, limits.tmp_bytes)[:-5]  # without `python -I -S harness.py <settings>`
    timings["bwrap_python"] = run_commands(
        [[*wrapped, python_executable(), "-I", "-S", "-c", source]] * args.programs, args.workers
    )
    programs, truth = load_programs(args.load)
    hogs = [subprocess.Popen([python_executable(), "-I", "-S", "-c", HOG]) for _ in range(args.hogs)]
    try:
        begin = time.perf_counter()
        load = sandbox.run_tests(programs)
        load_seconds = time.perf_counter() - begin
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    misjudged = [i for i, (o, t) in enumerate(zip(load, truth, strict=True)) if o.fraction != t]
    statuses = sorted({f"{load[i].status} ({load[i].detail})" for i in misjudged})
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
            "`code_reward`, `sandbox_stdio` the same problem read from standard input (3 `check_stdio` tests: a fork "
            "per test).",
            "",
            *rows,
            "",
            f"Load check: {args.load} programs in one call ({truth.count(1.0)} right, {truth.count(0.0)} wrong: a wrong "
            "result, an exception, a syntax error, 1% each of busy loops, spawners of 31 busy sessions and hoarders of "
            f"6 x 700 MiB; a quarter read standard input), beside {args.hogs} busy host processes: "
            f"{len(misjudged)} misjudged ({args.load / load_seconds:.1f} programs/s)"
            + (f": {'; '.join(statuses)[:300]}." if misjudged else "."),
            "",
            f"Limits (defaults of `SandboxLimits`): {limits}.",
        ]
    )
    print(body)
    write_section("bench_sandbox", body)
    assert not misjudged, f"misjudged under load: {len(misjudged)} of {args.load}"


if __name__ == "__main__":
    main()
