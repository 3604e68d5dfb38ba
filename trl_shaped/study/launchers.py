"""Where the cells of a study run (`StudyConfig.launcher`); every launcher calls `cell_runner.run_cell`, the one entry
of a cell, so caching, resuming and the cell's own safeguards are the same whichever runs it.

- `local`: a thread pool on this machine, `max_parallel` cells at once, each cell in its own process(es);
- `slurm`: each cell one Slurm job through submitit (`pip install trl_shaped[slurm]`), one node with
  `slurm_gpus_per_cell` GPUs; at real scale its stages run `accelerate launch --num_processes <GPUs>`; a built-in
  cell asks for no GPU by default (a CPU partition: `num_threads` cores);
- `submitit_local`: each cell a submitit job on this machine (submitit's `LocalExecutor`: the job path without a
  scheduler).

A job is a `CellJob`. At its time limit or on pre-emption submitit calls its `checkpoint`, which requeues the same
call (the protocol of `submitit.helpers.Checkpointable`); the requeued job calls `run_cell` again, which skips the
finished stages and resumes the interrupted one from its newest complete checkpoint. The study process submits the
jobs, prints a line whenever the number of cells queued / running / done / failed changes, and returns when all have
ended. Job scripts and logs: `<output_dir>/jobs/<job id>_*`. `jobs/cells.json` records each cell's latest job and the
digest of the settings it computes (the cell's fingerprint). A study run again while its Slurm jobs have not ended
(queued, running, pre-empted, or of a state sacct cannot tell) waits for those that compute its settings instead of
submitting them twice; a job computing other settings stops the study before anything is submitted or waited for,
unless `--overwrite true`, which cancels that job and submits the cell again.
"""

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .cell_runner import run_cell
from .cells import RESULT, StaleCells, cell_dir, cell_fingerprint, refusal, say, write_json_atomic
from .config import StudyConfig

POLL_SECONDS = 10.0  # how often the study looks at its jobs (submitit's Slurm watcher rate-limits sacct itself)
MAX_TIMEOUT_REQUEUES = 10  # a cell longer than 10 time limits fails instead of being requeued forever
SIGNAL_DELAY_S = 120  # submitit signals a job this long before its time limit (it checkpoints and requeues)
# <output_dir>/jobs/cells.json: "<preset>/seed<k>" -> {"job_id": the cell's latest job, "settings": their digest}
JOB_RECORD = "cells.json"
# Slurm states of a job that may not have ended: a requeued or pre-empted job goes back to PENDING, and UNKNOWN is
# what submitit reports when sacct does not answer (the job may well be running)
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "PREEMPTED", "UNKNOWN")  # fmt: skip


def import_submitit():
    """submitit, or an ImportError naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise ImportError(
            "the slurm and submitit_local launchers need submitit: pip install trl_shaped[slurm]"
        ) from None
    return submitit


class CellJob:
    """One cell as a submitit job: `run_cell(config, preset, seed, out)`.

    It follows the protocol of `submitit.helpers.Checkpointable` (without importing submitit before a job is
    submitted): `checkpoint`, called by submitit at the time limit or on pre-emption, returns the same call to requeue;
    the cell's own files are its checkpoint, so nothing else needs saving.
    """

    def __call__(self, config: StudyConfig, preset: str, seed: int, out: str) -> str:
        run_cell(config, preset, seed, Path(out))
        return str(cell_dir(out, preset, seed) / RESULT)

    def checkpoint(self, *args, **kwargs):
        return import_submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def job_name(config: StudyConfig, preset: str, seed: int) -> str:
    return f"{config.study_name}-{preset}-seed{seed}"


def slurm_parameters(config: StudyConfig, preset: str, seed: int) -> dict:
    """What `submitit.SlurmExecutor.update_parameters` gets for the job of the cell (`preset`, `seed`): one node, one
    task (`accelerate launch` starts the processes), `slurm_gpus_per_cell` GPUs and `slurm_cpus_per_gpu` cores per GPU
    (no GPU: a CPU job of `num_threads` cores, the built-in cell's default), the partition, account and time limit, and
    `slurm_additional_parameters` as further sbatch options."""
    gpus = config.slurm_gpus_per_cell
    params = {
        "job_name": job_name(config, preset, seed),
        "partition": config.slurm_partition,
        "account": config.slurm_account,
        "time": config.slurm_time_limit,
        "nodes": 1,
        "ntasks_per_node": 1,
        "gpus_per_node": gpus or None,
        "cpus_per_task": config.slurm_cpus_per_gpu * gpus if gpus else config.num_threads,
        "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": config.slurm_extra(),
    }
    return {k: v for k, v in params.items() if v is not None}


def make_executor(config: StudyConfig, folder: Path):
    """The submitit executor of the study's jobs (`folder/<job id>_*` holds each job's script, pickles and logs)."""
    submitit = import_submitit()
    if config.launcher == "slurm":
        return submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    import torch

    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    # submitit shows a local job only the GPUs it asks for (none by default)
    gpus = min(config.slurm_gpus_per_cell, torch.cuda.device_count())
    executor.update_parameters(timeout_min=config.slurm_time_limit, signal_delay_s=SIGNAL_DELAY_S, gpus_per_node=gpus)
    return executor


def run_local(config: StudyConfig, out: Path, todo: list[tuple[str, int]]) -> list[str]:
    """Run the cells `todo` on this machine, `config.parallel` at once; returns one line per failed cell."""
    start, finished, failures, refused = time.perf_counter(), [0], [], []

    def run_one_cell(cell):
        try:
            run_cell(config, *cell, out)
        except StaleCells as error:  # another process wrote the cell with other settings since the check
            refused.append(error)
            return
        except Exception as error:  # noqa: BLE001 - reported with the others by the caller
            failures.append(f"{cell[0]} seed {cell[1]}: {error}")
            say("study", f"FAILED {cell[0]} seed {cell[1]}: {error}")
            return
        finished[0] += 1
        say("study", f"({finished[0]}/{len(todo)}) {cell[0]} seed {cell[1]} done ({time.perf_counter() - start:.0f}s)")

    with ThreadPoolExecutor(max_workers=config.parallel(max(1, len(todo)))) as pool:
        list(pool.map(run_one_cell, todo))
    if refused:
        raise refused[0]
    return failures


def job_state(job, cell: Path) -> str:
    """queued, running, done or failed: done when the cell's result exists, failed when its job ended without it."""
    if (cell / RESULT).is_file():
        return "done"
    if job.done():
        return "failed"
    return "running" if str(job.state).upper().startswith(("RUNNING", "COMPLETING")) else "queued"


def settings_digest(config: StudyConfig, preset: str, seed: int) -> str:
    """The digest of what the cell (`preset`, `seed`) computes (its fingerprint), recorded with its job."""
    fingerprint = json.dumps(cell_fingerprint(config, preset, seed), sort_keys=True)
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def earlier_job(config: StudyConfig, executor, job_id: str | None):
    """The Slurm job an earlier invocation submitted for a cell, when it may not have ended (`ACTIVE_STATES`: a study
    whose waiting process stopped, then run again, waits for its jobs instead of submitting each cell twice); else
    None. A submitit local job cannot be looked up by its id (it is a child process of the invocation that started
    it), so its cell is submitted again."""
    if job_id is None or config.launcher != "slurm":
        return None
    job = executor.job_class(folder=executor.folder, job_id=job_id)
    return job if str(job.state).split(" ")[0].upper() in ACTIVE_STATES else None


def _recorded(entry) -> dict:
    """A `jobs/cells.json` entry (an id alone, as written before settings were recorded: settings unknown)."""
    return entry if isinstance(entry, dict) else {"job_id": entry, "settings": None}


def earlier_jobs(config: StudyConfig, executor, out: Path, todo: list[tuple[str, int]], submitted: dict) -> dict:
    """Decided before anything is submitted or waited for: the earlier jobs to wait for (they compute this run's
    settings), by cell. An earlier job that has not ended and computes other settings (or unknown ones) raises
    `StaleCells` naming it, or with `config.overwrite` is cancelled (its cell is submitted again)."""
    reuse, other = {}, []
    for preset, seed in todo:
        entry = _recorded(submitted.get(f"{preset}/seed{seed}", {"job_id": None}))
        job = earlier_job(config, executor, entry["job_id"])
        if job is None:
            continue
        if entry["settings"] == settings_digest(config, preset, seed):
            reuse[(preset, seed)] = job
        else:
            other.append((preset, seed, job))
    if other and not config.overwrite:
        found = [(f"{p} seed {s}", [f"job {job.job_id} ({job.state}) computes it with other settings"])
                 for p, s, job in other]  # fmt: skip
        raise StaleCells(refusal(out, found))
    for preset, seed, job in other:
        say("study", f"{preset} seed {seed}: cancelling job {job.job_id}, which computes other settings (overwrite)")
        job.cancel(check=False)
    return reuse


def _failure(job) -> str:
    try:
        error = job.exception()
    except Exception as exc:  # noqa: BLE001 - a job killed without writing its result: its log says more
        error = exc
    # submitit's message: a header, the job's traceback between two rules, then where its logs are
    parts = str(error or f"state {job.state}").split("-" * 22)
    lines = [line for line in (parts[1] if len(parts) > 2 else parts[0]).splitlines() if line.strip()]
    return f"job {job.job_id}: {lines[-1].strip() if lines else job.state}; log: {job.paths.stderr}"


def run_jobs(
    config: StudyConfig, out: Path, todo: list[tuple[str, int]], poll_seconds: float = POLL_SECONDS
) -> list[str]:
    """Submit the cells `todo` as jobs (`config.launcher`: slurm or submitit_local), wait for all of them, printing
    the counts of queued / running / done / failed cells when they change; returns one line per failed cell."""
    out = Path(out).resolve()  # a job may start in another working directory
    executor = make_executor(config, out / "jobs")
    record = out / "jobs" / JOB_RECORD
    submitted = json.loads(record.read_text()) if record.is_file() else {}
    jobs = earlier_jobs(config, executor, out, todo, submitted)
    for preset, seed in todo:
        job = jobs.get((preset, seed))
        if job is not None:
            say(
                "study",
                f"{preset} seed {seed}: job {job.job_id} of an earlier invocation is {job.state}; waiting for it",
            )
            continue
        if config.launcher == "slurm":
            executor.update_parameters(**slurm_parameters(config, preset, seed))
        job = executor.submit(CellJob(), config, preset, seed, str(out))
        submitted[f"{preset}/seed{seed}"] = {"job_id": job.job_id, "settings": settings_digest(config, preset, seed)}
        write_json_atomic(record, submitted)
        say("study", f"{preset} seed {seed}: job {job.job_id} (log {job.paths.stdout})")
        jobs[(preset, seed)] = job
    shown = None
    try:
        while True:
            states = {cell: job_state(job, cell_dir(out, *cell)) for cell, job in jobs.items()}
            counts = {name: list(states.values()).count(name) for name in ("queued", "running", "done", "failed")}
            line = ", ".join(f"{count} {name}" for name, count in counts.items())
            if line != shown:
                say("study", f"jobs: {line}")
                shown = line
            if counts["queued"] + counts["running"] == 0:
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        if config.launcher == "slurm":
            ids = " ".join(job.job_id for job in jobs.values())
            say("study", f"stopped waiting; the jobs keep running ({ids}): the same command waits for them again, "
                "`--report_only true` reports the finished cells")  # fmt: skip
        raise
    return [f"{p} seed {s}: {_failure(jobs[(p, s)])}" for (p, s), state in states.items() if state == "failed"]
