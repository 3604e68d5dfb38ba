"""One program cannot change another's result or take the machine: programs run for real in the bubblewrap sandbox.

Each hostile program here is written so that it is "right" (scores 1.0) exactly when the confinement held: it measures
what it got (live memory, descriptors, a loaded library, a mapped file) and answers the tests accordingly. A program
beside it, on the other worker or in another sandbox, must keep its right score.
"""

import dataclasses
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trl_shaped.sandbox import LocalSandbox, Program, SandboxLimits, cgroups
from trl_shaped.sandbox.confine import empty_folder
from trl_shaped.sandbox.isolation import FIRST_UID, MAX_WORKERS, UID_BLOCKS, _try_lock

RIGHT = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(5, 5) == 10"]
LIMITS = SandboxLimits(
    wall_time_s=3,
    cpu_time_s=2,
    memory_bytes=256 << 20,
    max_processes=32,
    max_output_bytes=1 << 20,
    tmp_bytes=8 << 20,
    max_open_files=64,
)
ROOT = os.getuid() == 0
HIERARCHY, NO_CGROUP = cgroups.find_hierarchy()
needs_root = pytest.mark.skipif(not ROOT, reason="separate uids per worker exist only for root trainers")
needs_cgroups = pytest.mark.skipif(HIERARCHY is None, reason=f"no writable cgroup hierarchy here: {NO_CGROUP}")


@pytest.fixture(scope="module")
def sandbox():
    box = LocalSandbox(LIMITS, workers=2)
    yield box
    box.close()


def scores(box, *programs) -> list[float]:
    return [o.fraction for o in box.run_tests([Program(p, TESTS) for p in programs])]


def processes_of(uid: int) -> list[int]:
    """Host pids of live (not zombie) processes running as `uid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields["Uid"].split()[0] == str(uid) and not fields["State"].strip().startswith("Z"):
                pids.append(int(entry.name))
    return pids


# --- /tmp is empty for every program ---------------------------------------------------------------------------

# Litter of a program that is right: it must score 1.0 (leaving files is no crime) and leave nothing behind.
FILL_TMP = (
    "import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))\n"
    "try:\n    for i in range(1000):\n        with open(f'litter_{i}', 'wb') as f:\n"
    "            f.write(b'x' * (256 << 10))\nexcept OSError:\n    pass\n"
)
LITTER = {
    # deeper than Python's recursion limit: today's os.walk cleanup died with RecursionError
    "1200_deep": "import os\nos.chdir('/tmp')\nfor _ in range(1200):\n    os.mkdir('litter')\n    os.chdir('litter')\n",
    # a path longer than PATH_MAX: os.walk skipped it, and the full /tmp stayed for every later program
    "past_path_max": "import os\nos.chdir('/tmp')\nfor _ in range(30):\n    os.mkdir('litter' * 40)\n"
    "    os.chdir('litter' * 40)\n",
    # folders it locked, a fifo, symlinks out of /tmp and in a loop
    "locked_fifo_links": "import os\nos.chdir('/tmp')\nos.makedirs('litter/a/b')\nos.chdir('litter/a/b')\n"
    "os.mkfifo('pipe')\nos.symlink('/usr', 'usr')\nos.symlink('loop', 'loop')\nos.symlink('/tmp/litter', 'up')\n",
}
LOCK_AFTER = "os.chdir('/tmp')\nfor root in ('litter/a/b', 'litter/a', 'litter'):\n    os.chmod(root, 0)\n"
CLEAN = (
    "import os\nassert not any(name.startswith('litter') for name in os.listdir('/tmp'))\n"
    "with open('/tmp/room', 'wb') as f:\n    f.write(b'y' * (256 << 10))\n" + RIGHT
)


@pytest.mark.parametrize("litter", list(LITTER))
def test_tmp_is_empty_for_every_program_whatever_it_left(litter):
    """One worker: the next program runs where the first one filled /tmp and hid its files deep or locked."""
    program = LITTER[litter] + FILL_TMP + (LOCK_AFTER if litter == "locked_fifo_links" else "") + RIGHT
    with LocalSandbox(LIMITS, workers=1) as box:
        outcomes = box.run_tests([Program(program, TESTS), Program(CLEAN, TESTS), Program(CLEAN, TESTS)])
    assert [o.fraction for o in outcomes] == [1.0, 1.0, 1.0], outcomes


def test_emptying_a_folder_goes_through_descriptors(tmp_path):
    """The cleanup itself, on the host: deeper than PATH_MAX and Python's recursion limit, locked folders, a fifo,
    and symlinks that lead out of the folder, whose targets must survive."""
    scratch, outside = tmp_path / "scratch", tmp_path / "outside"
    scratch.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("kept")
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):  # 1500 levels of 100 characters: 150 KB of path
        os.mkdir("d" * 100, dir_fd=fd)
        below = os.open("d" * 100, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.mkfifo("fifo", dir_fd=fd)
    os.symlink(outside, "out", dir_fd=fd)
    os.close(fd)
    (scratch / "locked" / "inner").mkdir(parents=True)
    (scratch / "locked" / "inner" / "file").write_text("x")
    os.symlink(outside, scratch / "top_link")
    os.chmod(scratch / "locked" / "inner", 0)
    os.chmod(scratch / "locked", 0o500)
    try:
        assert empty_folder(str(scratch)) is True
        assert os.listdir(scratch) == []
    finally:  # pytest's own cleanup of tmp_path recurses, and would fail on what a broken cleanup left
        empty_folder(str(scratch))
    assert (outside / "keep").read_text() == "kept"


@needs_root
def test_nothing_written_to_tmp_can_run(sandbox):
    """/tmp is noexec, nosuid, nodev: a copied extension module does not load, an executable copied there cannot be
    mapped for execution (what exec and the dynamic loader need) whatever the program's Python does."""
    load_copied_module = (
        "import glob, os, shutil, sys\n"
        "source = sorted(glob.glob(os.path.dirname(os.__file__) + '/lib-dynload/_bisect.*.so'))[0]\n"
        "os.makedirs('/tmp/pkg')\nopen('/tmp/pkg/__init__.py', 'w').close()\nshutil.copy(source, '/tmp/pkg/')\n"
        "sys.path.insert(0, '/tmp')\ntry:\n    import pkg._bisect\n    loaded = True\nexcept ImportError:\n"
        "    loaded = False\ndef add(a, b):\n    return None if loaded else a + b\n"
    )
    map_executable = (
        "import mmap, os, shutil\nshutil.copy('/bin/true', '/tmp/tool')\nos.chmod('/tmp/tool', 0o755)\n"
        "fd = os.open('/tmp/tool', os.O_RDONLY)\ntry:\n    mmap.mmap(fd, 0, prot=mmap.PROT_READ | mmap.PROT_EXEC)\n"
        "    mapped = True\nexcept PermissionError:\n    mapped = False\n"
        "runnable = os.access('/tmp/tool', os.X_OK)\nflags = os.statvfs('/tmp').f_flag\n"
        "sealed = bool(flags & os.ST_NOEXEC and flags & os.ST_NOSUID and flags & os.ST_NODEV)\n"
        "def add(a, b):\n    return a + b if sealed and not mapped and not runnable else None\n"
    )
    assert scores(sandbox, load_copied_module, map_executable, RIGHT) == [1.0, 1.0, 1.0]


def capability_sets(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: int(line.split(":")[1], 16) for line in status.splitlines() if line.startswith("Cap")}


@needs_root
@needs_cgroups  # the harness is found through its worker's group
def test_the_program_has_no_capability_and_the_server_none_to_mount(sandbox):
    sandbox.run_tests([Program(RIGHT, TESTS)] * 2)  # both workers started
    done = threading.Thread(target=sandbox.run_tests, args=([Program("import time\ntime.sleep(2)\n" + RIGHT, TESTS)],))
    done.start()
    try:
        for _ in range(500):
            worker = next((w for w in sandbox._workers if processes_of(w.uid)), None)
            if worker is not None:
                break
            time.sleep(0.01)
        assert worker is not None, "the program never ran as a worker's uid"
        program = processes_of(worker.uid)
        for pid in program:
            sets = capability_sets(pid)
            assert sets["CapPrm"] == sets["CapEff"] == sets["CapInh"] == sets["CapAmb"] == 0, sets
        server_group = Path(worker.groups.server_procs()[0]).read_text().split()
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_text().split("\0") for pid in server_group}
        harness = [pid for pid, argv in commands.items() if "bwrap" not in argv[0] and "/sandbox/harness.py" in argv]
        assert len(harness) == 1, server_group
        sys_admin = 1 << 21
        for pid in harness:
            sets = capability_sets(pid)
            assert not (sets["CapEff"] | sets["CapPrm"] | sets["CapBnd"] | sets["CapAmb"]) & sys_admin, sets
    finally:
        done.join()


# --- no two workers share a uid ------------------------------------------------------------------------------------


@needs_root
def test_two_sandboxes_in_one_process_never_share_a_uid():
    """A program in one sandbox holds all the processes its uid may have; a right program in the other sandbox, which
    needs a thread, still scores 1.0 (with a shared uid, its thread could not start)."""
    hog = (
        "import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(60)\n"
        "            os._exit(0)\n    except OSError:\n        break\ntime.sleep(60)\n"
    )
    threaded = (
        "import threading\nresult = []\nthread = threading.Thread(target=lambda: result.append(1))\n"
        "thread.start()\nthread.join()\ndef add(a, b):\n    return a + b if result else None\n"
    )
    with LocalSandbox(LIMITS, workers=1) as first, LocalSandbox(SandboxLimits(wall_time_s=3), workers=1) as second:
        first.run_tests([Program(RIGHT, TESTS)])
        second.run_tests([Program(RIGHT, TESTS)])
        uids = [first._workers[0].uid, second._workers[0].uid]
        assert uids[0] != uids[1]
        assert all(FIRST_UID <= uid < FIRST_UID + UID_BLOCKS * MAX_WORKERS for uid in uids)
        hogging = threading.Thread(target=first.run_tests, args=([Program(hog, TESTS)],))
        hogging.start()
        try:
            for _ in range(1000):  # until the hog holds every process its uid may have
                if len(processes_of(uids[0])) >= LIMITS.max_processes:
                    break
                time.sleep(0.005)
            assert len(processes_of(uids[0])) >= LIMITS.max_processes
            assert scores(second, threaded) == [1.0]
        finally:
            hogging.join()
        assert processes_of(uids[0]) == []
    for uid in uids:  # the sandboxes closed: their uids are free for the next worker on the machine
        free = _try_lock(uid)
        assert free is not None
        os.close(free)


# --- memory, processes, descriptors and CPU as a whole -------------------------------------------------------------

MEMORY_HOG = """
import os, select, time
CHILDREN, EACH = 6, 160 << 20
r, w = os.pipe()
children = []
for i in range(CHILDREN):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        data = b"x" * EACH  # written, so every page is really held
        os.write(w, bytes([i]))
        time.sleep(60)
        os._exit(0)
    children.append(pid)
os.close(w)
reported, dead = set(), set()
while len(reported | dead) < CHILDREN:
    if select.select([r], [], [], 0.02)[0]:
        reported.update(os.read(r, 64))
    for i, pid in enumerate(children):
        if i not in dead and os.waitpid(pid, os.WNOHANG) != (0, 0):
            dead.add(i)
holding = len(reported - dead)
def add(a, b):
    return a + b if holding * EACH <= MEMORY else None
"""


@needs_root
@needs_cgroups
def test_memory_is_capped_for_the_program_as_a_whole():
    """6 children touching 160 MiB each against a 256 MiB cap: at most one holds its memory at a time (the others are
    killed), the group's peak stays under the cap, and the program beside it scores 1.0. (Wall time to spare: writing
    a GiB and the kills take a while on a busy machine.)"""
    hog = f"MEMORY = {LIMITS.memory_bytes}\n" + MEMORY_HOG
    with LocalSandbox(dataclasses.replace(LIMITS, wall_time_s=10), workers=2) as box:
        outcomes = box.run_tests([Program(hog, TESTS), Program(RIGHT, TESTS)])
        assert [o.fraction for o in outcomes] == [1.0, 1.0], outcomes
        for worker in box._workers:
            assert worker.groups.peak_memory() <= LIMITS.memory_bytes
        assert max(worker.groups.peak_memory() for worker in box._workers) >= 160 << 20  # the hog was measured


@needs_root
def test_descriptors_are_capped(sandbox):
    opener = (
        "import os\nheld = []\ntry:\n    for _ in range(100000):\n        held.append(os.open('/dev/null', os.O_RDONLY))\n"
        f"except OSError:\n    pass\ndef add(a, b):\n    return a + b if len(held) < {LIMITS.max_open_files} else None\n"
    )
    assert scores(sandbox, opener, RIGHT) == [1.0, 1.0]


@needs_cgroups
def test_twenty_threads_fit_under_the_memory_cap(sandbox):
    """Threads reserve address space (stacks, malloc arenas) that they never touch: the cap counts touched memory."""
    pool = (  # a barrier: all 20 threads must be alive at once
        "import threading\nfrom concurrent.futures import ThreadPoolExecutor\nbarrier = threading.Barrier(20)\n"
        "def task(x):\n    barrier.wait(timeout=5)\n    return x\nwith ThreadPoolExecutor(20) as pool:\n"
        "    total = sum(pool.map(task, range(20)))\ndef add(a, b):\n    return a + b if total == 190 else None\n"
    )
    assert scores(sandbox, pool) == [1.0]


@needs_root
@needs_cgroups
def test_busy_processes_cannot_starve_the_other_worker():
    """31 busy processes that left the program's session on one worker; on the other, a program that needs 0.3 s of
    CPU within its 4 s of wall time still gets it, trial after trial. (Sharing two cores with 32 busy processes, it
    would get 1/16 of a core: 5 s.)"""
    busy = (
        "import os\nfor _ in range(31):\n    if os.fork() == 0:\n        os.setsid()\n        while True:\n"
        "            pass\nwhile True:\n    pass\n"
    )
    light = "import time\ntime.sleep(0.3)\nwhile time.process_time() < 0.3:\n    pass\n" + RIGHT
    with LocalSandbox(dataclasses.replace(LIMITS, wall_time_s=4), workers=2) as box:
        for _ in range(3):
            outcomes = box.run_tests([Program(busy, TESTS), Program(light, TESTS)])
            assert [o.fraction for o in outcomes] == [0.0, 1.0], outcomes


@needs_root
@needs_cgroups
def test_a_fork_bomb_is_held_at_the_process_cap(sandbox):
    """The program's group never holds more than max_processes, as counted by the kernel while the bomb runs."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    sandbox.run_tests([Program(RIGHT, TESTS)] * 2)  # both workers started
    counters = [
        os.path.join(folder, cgroups.PROGRAM, "pids.current")
        for worker in sandbox._workers
        for folder in worker.groups.folders
        if os.path.exists(os.path.join(folder, cgroups.PROGRAM, "pids.current"))
    ]
    assert len(counters) == 2
    counts, running = [], threading.Event()

    def sample():
        while not running.is_set():
            counts.extend(int(Path(counter).read_text()) for counter in counters)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert scores(sandbox, bomb, RIGHT, RIGHT) == [0.0, 1.0, 1.0]
    finally:
        running.set()
        sampler.join()
    assert LIMITS.max_processes - 2 <= max(counts) <= LIMITS.max_processes


# --- settings, and nothing left behind ------------------------------------------------------------------------------


def test_limits_check_the_new_settings():
    with pytest.raises(ValueError, match="max_open_files"):
        SandboxLimits(max_open_files=3)
    with pytest.raises(ValueError, match=r"cgroups must be one of \['auto', 'require', 'off'\]"):
        SandboxLimits(cgroups="yes")


def test_without_cgroups_programs_still_run_with_per_process_limits():
    with LocalSandbox(SandboxLimits(cgroups="off", max_open_files=32), workers=1) as box:
        opener = (
            "import os\nheld = []\ntry:\n    for _ in range(1000):\n        held.append(os.open('/dev/null', 0))\n"
            "except OSError:\n    pass\ndef add(a, b):\n    return a + b if len(held) < 32 else None\n"
        )
        assert scores(box, opener, RIGHT) == [1.0, 1.0]
        assert box._workers[0].groups is None


@needs_cgroups
def test_cgroups_require_is_met_here_and_groups_are_removed_on_close(tmp_path):
    box = LocalSandbox(SandboxLimits(cgroups="require"), workers=1)
    assert scores(box, RIGHT) == [1.0]
    folders = box._workers[0].groups.folders
    assert folders and all(os.path.isdir(folder) for folder in folders)
    box.close()
    assert not any(os.path.exists(folder) for folder in folders)


@needs_root
@needs_cgroups
def test_groups_a_dead_trainer_left_are_removed():
    stale_uid = FIRST_UID + (UID_BLOCKS - 1) * MAX_WORKERS + MAX_WORKERS - 1  # no live worker holds it
    stale = [os.path.join(base, f"{cgroups.PREFIX}u{stale_uid}") for base in set(HIERARCHY.bases.values())]
    for folder in stale:
        os.makedirs(os.path.join(folder, cgroups.PROGRAM), exist_ok=True)
    with LocalSandbox(LIMITS, workers=1) as box:
        assert scores(box, RIGHT) == [1.0]
        assert not any(os.path.exists(folder) for folder in stale)


@needs_root
def test_a_worker_whose_scratch_folder_stays_dirty_is_restarted():
    """What the cleanup cannot remove (here a mount the test puts in the working folder of an unisolated worker)
    makes the harness ask for a restart: the program is still judged, and the next one gets a fresh folder."""
    with LocalSandbox(SandboxLimits(isolation="none", cgroups="off"), workers=1) as box:
        assert scores(box, RIGHT) == [1.0]
        worker = box._workers[0]
        first = worker.workdir
        stuck = os.path.join(first, "stuck")
        os.mkdir(stuck)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", stuck], check=True)
        try:
            assert scores(box, RIGHT) == [1.0]
            assert not worker.alive()  # stopped after its reply
            assert scores(box, "import os\nassert 'stuck' not in os.listdir('.')\n" + RIGHT) == [1.0]
            assert worker.workdir != first
        finally:
            subprocess.run(["umount", stuck], check=True)
            empty_folder(first)
            os.rmdir(first)
