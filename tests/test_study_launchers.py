"""Where a study's cells run: the Slurm job a cell would get (built, not submitted), the requeue protocol of a cell
job, `--dry_run`, `--report_only`, figures left out for want of data, and a tiny study run as submitit jobs on this
machine with a job killed mid-stage (the study rerun resubmits it) and a job pre-empted mid-stage (submitit requeues
it): both resume from the cell's checkpoint instead of starting over."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_study_claims import make_cell

from trl_shaped.checkpoints import last_complete_checkpoint
from trl_shaped.study import launchers
from trl_shaped.study.cells import FINGERPRINT, StaleCells, cell_fingerprint
from trl_shaped.study.config import LAUNCH_FIELDS, StudyConfig
from trl_shaped.study.figures import write_figures
from trl_shaped.study.launchers import CellJob, slurm_parameters
from trl_shaped.study.report import render_markdown
from trl_shaped.study.runner import build_results, launcher, run_study, stage_commands

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TINY = ["--sft_steps", "8", "--grpo_steps", "2", "--num_test_problems", "4", "--num_train_problems", "40",
        "--eval_num_samples", "2", "--hidden_size", "32", "--presets", "ce", "--num_seeds", "1"]  # fmt: skip
ENV = {"python": "3", "torch": "t", "transformers": "x", "trl": "y", "blas": [], "cell_threads": 1, "thread_env": {},
       "platform": "p", "cpu_count": 2, "cuda": False, "load_average_before": None,
       "load_average_after": [1.0, 0, 0]}  # fmt: skip


def real_scale(**kwargs):
    defaults = dict(
        presets="precision",
        num_seeds=2,
        model_name_or_path="Qwen/Qwen3-0.6B-Base",
        stage1_recipe=str(RECIPES / "stage1.yaml"),
        rl_recipe=str(RECIPES / "rl_paper.yaml"),
        eval_recipe=str(RECIPES / "eval_paper.yaml"),
        accelerate_config=str(ROOT / "accelerate_configs" / "zero2.yaml"),
    )
    return StudyConfig(**{**defaults, **kwargs})


def test_the_slurm_job_of_a_cell(tmp_path, monkeypatch):
    from submitit import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # as on a login node (srun found)
    config = real_scale(
        output_dir=str(tmp_path / "qwen_study"),
        launcher="slurm",
        dry_run=True,  # this machine has no sbatch; the parameters are the same
        slurm_partition="h100",
        slurm_account="lab",
        slurm_gpus_per_cell=4,
        slurm_time_limit=600,
        slurm_cpus_per_gpu=12,
        slurm_additional_parameters='{"qos": "high", "mem": "0"}',
        report_to=["wandb"],
    )
    executor = launchers.make_executor(config, tmp_path / "jobs")
    assert isinstance(executor, SlurmExecutor) and executor.max_num_timeout == launchers.MAX_TIMEOUT_REQUEUES
    executor.update_parameters(**slurm_parameters(config, "precision", 43))  # submitit checks every name
    script = executor._make_submission_file_text("python -u -m submitit.core._submit jobs", "uid")
    for line in (
        "--job-name=qwen_study-precision-seed43", "--partition=h100", "--account=lab", "--time=600", "--nodes=1",
        "--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=48", "--signal=USR2@120", "--qos=high",
        "--mem=0",
    ):  # fmt: skip
        assert f"#SBATCH {line}\n" in script
    # the job's four stages: accelerate launch across the job's 4 GPUs, with the cell's run names
    argv = launcher(config)
    assert argv[argv.index("--num_processes") + 1] == "4" and argv[argv.index("--config_file") + 1].endswith(
        "zero2.yaml"
    )
    cell = tmp_path / "cells" / "precision" / "seed43"
    commands = dict(stage_commands(config, "precision", 43, cell))
    for stage in ("stage1", "rl"):
        module = importlib.import_module(f"trl_shaped.scripts.{'sft' if stage == 'stage1' else 'grpo'}")
        _, args, _, _ = module.make_parser().parse_args_and_config(commands[stage][1:] + ["--bf16", "false"])
        assert args.run_name == f"qwen_study/precision/seed43/{stage}" and args.project == "qwen_study"
        assert args.report_to == ["wandb"]
    for stage in ("eval_stage1", "eval_rl"):  # the evaluation stages report to the same tracker
        argv = commands[stage]
        assert argv[argv.index("--tracker_run_name") + 1] == f"qwen_study/precision/seed43/{stage}"
        assert argv[argv.index("--report_to") + 1] == "wandb" and argv[argv.index("--project") + 1] == "qwen_study"
    # launch fields are fields of the config; the GPU count is not among them (it sets the global batch)
    assert set(LAUNCH_FIELDS) <= set(vars(config)) and "slurm_gpus_per_cell" not in LAUNCH_FIELDS
    # the local launcher keeps the accelerate config's process count, and the recipe's tracker without report_to
    local = real_scale()
    assert "--num_processes" not in launcher(local)
    assert "--report_to" not in dict(stage_commands(local, "precision", 42, cell))["stage1"]


def test_a_cell_job_requeues_the_same_call():
    config = StudyConfig(presets="ce", num_seeds=1)
    job = CellJob()
    delayed = job.checkpoint(config, "ce", 0, "out")
    assert delayed.function is job and delayed.args == (config, "ce", 0, "out")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(launcher="pbs"), "launcher must be one of"),
        (dict(slurm_additional_parameters="qos=high"), "slurm_additional_parameters must be a JSON object"),
        (dict(slurm_additional_parameters="[1]"), "slurm_additional_parameters must be a JSON object"),
        (dict(slurm_gpus_per_cell=-1), "slurm_gpus_per_cell must be an integer >= 0"),
        (dict(slurm_time_limit=1.5), "slurm_time_limit must be an integer >= 1"),
        (dict(report_to=["tensorbored"]), "report_to must name trackers"),
        (dict(report_only=True, dry_run=True), "report_only and dry_run exclude each other"),
    ],
)
def test_launch_fields_are_checked_at_config_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**kwargs)


def test_real_scale_reports_to_one_tracker_and_the_cli_refuses_bad_values(capsys):
    from trl_shaped.scripts.study import run

    with pytest.raises(ValueError, match="report_to at real scale names one tracker"):
        real_scale(report_to=["wandb", "tensorboard"])
    with pytest.raises(SystemExit) as exit_info:
        run(["--slurm_additional_parameters", "{qos", "--output_dir", "unused"])
    assert exit_info.value.code == 2 and "slurm_additional_parameters must be a JSON object" in capsys.readouterr().err


def test_slurm_needs_sbatch_and_submitit_at_config_time(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # the suite itself may run in a Slurm job
    with pytest.raises(ValueError, match="launcher slurm needs Slurm's sbatch"):
        StudyConfig(launcher="slurm")
    StudyConfig(launcher="slurm", dry_run=True)  # needs neither: nothing is submitted
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    StudyConfig(launcher="slurm")  # a cell's job reads the study's config back and submits nothing
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install trl_shaped\[slurm\]"):
        StudyConfig(launcher="submitit_local")
    with pytest.raises(ImportError, match=r"pip install trl_shaped\[slurm\]"):
        launchers.import_submitit()


class FakeSlurmJob:
    """A Slurm job as submitit shows it; `finish` writes the cell's result, as the job's `run_cell` would."""

    def __init__(self, folder, job_id, state="RUNNING", finish=None):
        self.folder, self.job_id, self.state, self.finish = folder, job_id, state, finish
        self.paths = type("Paths", (), {"stdout": Path(folder) / f"{job_id}_0_log.out"})

    def done(self):  # still running when first asked; the cell's result is there by the next look
        self.finish()
        return False


def _slurm_commands(tmp_path, monkeypatch, states: dict[str, str]) -> Path:
    """`sacct` answering `states` (job id -> state; "fail": sacct fails) and `scancel` recording its job ids, on the
    PATH: what submitit's own SlurmJob reads and calls."""
    from submitit import SlurmJob

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    table = "\\n".join(f"{job}|{state}|node1" for job, state in states.items() if state != "fail")
    fails = " ".join(job for job, state in states.items() if state == "fail")
    (bin_dir / "sacct").write_text(
        f'#!/bin/sh\nfor id in {fails or "none"}; do case "$*" in *"-j $id"*) exit 1;; esac; done\n'
        f"printf 'JobID|State|NodeList\\n{table}\\n'\n"
    )
    (bin_dir / "scancel").write_text(f'#!/bin/sh\necho "$1" >> {tmp_path / "cancelled"}\n')
    for name in ("sacct", "scancel"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    SlurmJob.watcher.clear()  # submitit caches states across jobs
    return tmp_path / "cancelled"


def _slurm_study(out: Path, **kwargs) -> StudyConfig:
    values = dict(presets="ce", num_seeds=2, output_dir=str(out), launcher="slurm", dry_run=True)
    config = StudyConfig(**(values | kwargs))
    config.dry_run = False
    return config


def _executor(out: Path, submitted: list):
    from submitit import SlurmJob

    class Executor:  # submitit's SlurmExecutor without sbatch: its job class looks jobs up through sacct
        folder = out / "jobs"
        job_class = SlurmJob

        def update_parameters(self, **params):
            self.params = params

        def submit(self, function, config, preset, seed, out_dir):
            submitted.append((preset, seed, self.params["job_name"]))
            cell = out / "cells" / preset / f"seed{seed}"
            return FakeSlurmJob(self.folder, str(20 + seed), finish=lambda: cell.mkdir(parents=True, exist_ok=True)
                                or (cell / "result.json").write_text("{}"))  # fmt: skip

    return Executor()


def test_a_rerun_waits_for_the_slurm_jobs_that_have_not_ended_instead_of_submitting_twice(tmp_path, monkeypatch):
    out = tmp_path / "study"
    config = _slurm_study(out)
    # seed 0's job is pre-empted (Slurm requeues it), seed 1's job: sacct does not answer; both computing these
    # settings; then a third study's seed 2 was cancelled
    cancelled = _slurm_commands(tmp_path, monkeypatch, {"11": "PREEMPTED", "12": "fail", "13": "CANCELLED by 0"})
    submitted = []
    monkeypatch.setattr(launchers, "make_executor", lambda config, folder: _executor(out, submitted))
    (out / "jobs").mkdir(parents=True)
    digests = {s: launchers.settings_digest(config, "ce", s) for s in (0, 1, 2)}
    record = {f"ce/seed{s}": {"job_id": str(11 + s), "settings": digests[s]} for s in (0, 1, 2)}
    (out / "jobs" / "cells.json").write_text(json.dumps(record))
    for seed in (0, 1):  # the earlier jobs finish their cells while this study waits
        (out / "cells" / "ce" / f"seed{seed}").mkdir(parents=True)
        (out / "cells" / "ce" / f"seed{seed}" / "result.json").write_text("{}")
    failures = launchers.run_jobs(_slurm_study(out, num_seeds=3), out, [("ce", 0), ("ce", 1), ("ce", 2)], 0)
    assert failures == [] and submitted == [("ce", 2, "study-ce-seed2")] and not cancelled.exists()
    assert json.loads((out / "jobs" / "cells.json").read_text())["ce/seed2"] == {"job_id": "22", "settings": digests[2]}


def test_a_job_computing_other_settings_stops_the_study_up_front_or_is_cancelled_with_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "study"
    cancelled = _slurm_commands(tmp_path, monkeypatch, {"11": "RUNNING", "12": "PENDING"})
    old = _slurm_study(out, sft_steps=7)
    record = {
        f"ce/seed{s}": {"job_id": str(11 + s), "settings": launchers.settings_digest(old, "ce", s)} for s in (0, 1)
    }
    (out / "jobs").mkdir(parents=True)
    (out / "jobs" / "cells.json").write_text(json.dumps(record))
    submitted = []
    monkeypatch.setattr(launchers, "make_executor", lambda config, folder: _executor(out, submitted))
    # other settings: refused before anything is submitted or waited for, naming the jobs
    with pytest.raises(StaleCells, match=r"ce seed 0, ce seed 1: job 11 \(RUNNING\) computes it with other settings"):
        launchers.run_jobs(_slurm_study(out), out, [("ce", 0), ("ce", 1)], 0)
    assert submitted == [] and not cancelled.exists()
    # an entry of an older version (the id alone: settings unknown) is not taken as computing these settings
    (out / "jobs" / "cells.json").write_text(json.dumps({"ce/seed0": "11"}))
    with pytest.raises(StaleCells, match="job 11"):
        launchers.run_jobs(_slurm_study(out), out, [("ce", 0)], 0)
    # overwrite: the old jobs are cancelled and the cells submitted again
    (out / "jobs" / "cells.json").write_text(json.dumps(record))
    failures = launchers.run_jobs(_slurm_study(out, overwrite=True), out, [("ce", 0), ("ce", 1)], 0)
    assert failures == [] and cancelled.read_text().split() == ["11", "12"]
    assert [s for _, s, _ in submitted] == [0, 1]


def test_built_in_cells_go_to_cpu_jobs(tmp_path):
    config = _slurm_study(tmp_path / "study", num_threads=2)
    assert config.slurm_gpus_per_cell == 0  # the built-in default: single-threaded CPU cells need no GPU
    params = slurm_parameters(config, "ce", 0)
    assert "gpus_per_node" not in params and params["cpus_per_task"] == 2
    assert real_scale().slurm_gpus_per_cell == 8
    with pytest.raises(ValueError, match="slurm_gpus_per_cell must be an integer >= 1"):
        real_scale(slurm_gpus_per_cell=0)


def test_a_failed_job_is_counted_and_named_with_its_error(tmp_path, capsys):
    config = StudyConfig(
        presets="ce", num_seeds=1, output_dir=str(tmp_path / "study"), launcher="submitit_local",
        model_name_or_path=str(tmp_path / "no_model"), stage1_recipe=str(RECIPES / "tiny_sft.yaml"),
        rl_recipe=str(RECIPES / "tiny_grpo.yaml"), eval_recipe=str(RECIPES / "tiny_eval.yaml"),
    )  # fmt: skip
    out = Path(config.output_dir)
    (failure,) = launchers.run_jobs(config, out, [("ce", 0)], poll_seconds=0.2)
    log = out / "cells" / "ce" / "seed0" / "log.txt"
    assert failure.startswith("ce seed 0: job ") and "RuntimeError: exit status 1 of `" in failure
    assert f"see {log}; log: {out / 'jobs'}" in failure and "no_model" in log.read_text()
    assert "[study] jobs: 0 queued, 0 running, 0 done, 1 failed" in capsys.readouterr().out


def test_dry_run_prints_every_cells_commands_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "built_in"
    run_study(StudyConfig(presets="ce,precision", num_seeds=2, output_dir=str(out), dry_run=True))
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "trl_shaped.study.builtin_cell" in line]
    assert len(lines) == 4 and not (out / "cells").exists()
    config_path = out / "study_config.json"
    assert json.loads(config_path.read_text())["presets"] == "ce,precision"  # what the printed commands read
    assert lines[-1].endswith(f"{config_path} precision 1 {out / 'cells' / 'precision' / 'seed1'}")
    assert lines[0].startswith(
        f"WANDB_RUN_GROUP=built_in OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 {sys.executable} -m"
    )

    run_study(real_scale(output_dir=str(tmp_path / "big"), dry_run=True, launcher="slurm", slurm_gpus_per_cell=2))
    text = capsys.readouterr().out
    commands = [line for line in text.splitlines() if "accelerate.commands.launch" in line]
    assert len(commands) == 2 * 2 * 4  # presets (ce joins) x seeds x stages
    assert all("--num_processes 2" in line for line in commands)
    assert sum(" -m trl_shaped sft " in line for line in commands) == 4
    # what to run per cell: the cell runner, which runs these stages, resumes them and records the cell
    cell_commands = [line for line in text.splitlines() if "-m trl_shaped.study.cell_runner " in line]
    assert len(cell_commands) == 4 and not any(line.startswith("#") for line in cell_commands)
    assert all(line.startswith("#") for line in commands)
    assert not (tmp_path / "big" / "cells").exists()


def test_report_only_reports_the_finished_cells_and_names_the_missing(tmp_path, capsys):
    from trl_shaped.scripts.study import run

    out = tmp_path / "study"
    argv = ["--presets", "ce,precision", "--num_seeds", "2", "--output_dir", str(out), "--report_only", "true"]
    with pytest.raises(SystemExit) as exit_info:  # a usage error before anything runs
        run(argv)
    assert exit_info.value.code == 2 and "report_only: no cell of" in capsys.readouterr().err
    finished = {("ce", 0): 2.0, ("ce", 1): 2.1, ("precision", 0): 1.8}
    config = StudyConfig(presets="ce,precision", num_seeds=2, output_dir=str(out))
    for (preset, seed), entropy in finished.items():
        cell = out / "cells" / preset / f"seed{seed}"
        cell.mkdir(parents=True)
        (cell / FINGERPRINT).write_text(json.dumps(cell_fingerprint(config, preset, seed)))  # this study's settings
        (cell / "result.json").write_text(json.dumps(make_cell(preset, seed, entropy=entropy, nll=1.0)))
    partial = out / "cells" / "precision" / "seed1"
    partial.mkdir(parents=True)
    (partial / "stage1.json").write_text("{}")  # stage 1 done, the rest still running
    run(argv)
    results = json.loads((out / "results.json").read_text())
    assert results["missing_cells"] == [{"preset": "precision", "seed": 1, "stages_done": ["stage1"], "started": True}]
    assert results["values"]["stage1_entropy"] == {"ce": {"0": 2.0, "1": 2.1}, "precision": {"0": 1.8}}
    assert results["presets"]["ce"]["stage1_entropy"]["mean"] == pytest.approx(2.05)
    report = (out / "report.md").read_text()
    assert "This report covers 3 of 4 cells" in report and "- precision seed 1 (stages done: stage1)" in report
    assert not (partial / "result.json").exists()  # nothing ran

    # a finished cell of other settings is left out as missing, never mixed into the numbers
    ce1 = out / "cells" / "ce" / "seed1"
    (ce1 / FINGERPRINT).write_text(json.dumps(cell_fingerprint(config, "ce", 1) | {"sft_steps": 1}))
    run(argv)
    results = json.loads((out / "results.json").read_text())
    assert {(c["preset"], c["seed"]) for c in results["missing_cells"]} == {("ce", 1), ("precision", 1)}
    assert results["values"]["stage1_entropy"]["ce"] == {"0": 2.0}


def test_a_figure_without_data_is_left_out_with_the_reason(tmp_path):
    cells = [make_cell(p, s, entropy=1.0 + s / 10, nll=1.0) for p in ("ce", "precision") for s in (0, 1)]
    for cell in cells:
        cell["rl"]["log_history"] = []  # a GRPO stage that logged nothing
    (tmp_path / "rl_curves.png").write_bytes(b"stale")  # from an earlier report
    figures = write_figures(tmp_path, cells)
    assert figures["rl_curves"] is None and not (tmp_path / "rl_curves.png").exists()
    assert figures["stage1"].is_file() and figures["pass_at_k"].is_file()
    config = StudyConfig(presets="ce,precision", num_seeds=2, output_dir=str(tmp_path))
    text = render_markdown(build_results(config, cells, 1.0, ENV), figures)
    assert "*Figure RL curves left out: no GRPO step logged reward" in text and "rl_curves.png" not in text
    assert "![stage 1](stage1.png)" in text


def _attempts(cell: Path) -> list[str]:
    return (cell / "attempts.log").read_text().splitlines() if (cell / "attempts.log").is_file() else []


def _job_task(out: Path) -> int:
    """The pid of the process that runs the (latest) cell job: the child of submitit's local job controller, whose
    pid is the job id."""
    newest = max((out / "jobs").glob("*_submitted.pkl"), key=lambda p: p.stat().st_mtime_ns)
    controller = int(newest.name.split("_")[0])
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's process through /proc")
def test_cells_run_as_jobs_and_a_killed_or_preempted_job_resumes(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "study"
    argv = [sys.executable, "-m", "trl_shaped", "study", *TINY, "--sft_steps", "40", "--grpo_steps", "8",
            "--checkpoints_per_stage", "4", "--launcher", "submitit_local", "--report_to", "tensorboard",
            "--output_dir", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cell = out / "cells" / "ce" / "seed0"

    def wait_for(condition, proc):
        while not condition():
            assert proc.poll() is None, "the study ended first"
            time.sleep(0.05)

    # 1. The study, its job and the cell's worker are killed once stage 1 has saved a checkpoint (a node lost).
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: last_complete_checkpoint(cell / "stage1") is not None, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (cell / "result.json").exists() and _attempts(cell) == ["stage1 resumed_from=None"]

    # 2. The same command again submits a new job; pre-empt it once GRPO has saved a checkpoint: submitit calls the
    # job's checkpoint and requeues it, and the requeued job resumes GRPO.
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    try:
        wait_for(lambda: last_complete_checkpoint(cell / "rl") is not None, proc)
        os.kill(_job_task(out), signal.SIGUSR2)  # what Slurm sends before pre-emption or the time limit
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-3000:]
    assert "running 1, each a submitit_local job" in output and "jobs: 0 queued, 0 running, 1 done, 0 failed" in output
    attempts = _attempts(cell)
    assert attempts[:3] == ["stage1 resumed_from=None", attempts[1], "rl resumed_from=None"], attempts
    assert attempts[1].startswith("stage1 resumed_from=") and "checkpoint-" in attempts[1]
    assert len(attempts) == 4 and attempts[3].startswith("rl resumed_from=") and "checkpoint-" in attempts[3]
    result = json.loads((cell / "result.json").read_text())
    assert result["stage1"]["resumed_from"] == attempts[1].split("=", 1)[1]
    assert result["rl"]["resumed_from"] == attempts[3].split("=", 1)[1]
    assert max(e["step"] for e in result["rl"]["log_history"]) == 8  # trained to the end
    logs = "".join(p.read_text() for p in (out / "jobs").glob("*_log.*"))
    assert "Requeued job" in logs  # submitit's own record of the requeue
    assert (out / "report.md").is_file() and (out / "rl_curves.png").is_file()
    for stage in ("stage1", "rl"):  # the built-in cell reported to the tracker asked for
        assert list((cell / stage).rglob("events.out.tfevents.*")), stage
