"""Nothing lost (trl_shaped/checkpoints.py): a run killed while it saves resumes from the newest complete checkpoint,
and checkpoint rotation and the model card leave a user's own files in output_dir alone."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from _grpo_common import arithmetic_prompts, grpo_config, tiny_policy, varied_reward
from _sft_common import config, text_dataset, tokenizer
from transformers import TrainerCallback, TrainerState
from transformers.trainer_utils import get_last_checkpoint

from trl_shaped import ShapedGRPOTrainer, ShapedSFTTrainer
from trl_shaped.checkpoints import (
    MANIFEST_NAME,
    MODEL_CARD_NAME,
    checkpoint_problem,
    last_complete_checkpoint,
    resolve_resume,
)
from trl_shaped.tiny import build_tiny_model

TOK = tokenizer()
CHECKPOINT_LOGGER = "trl_shaped.checkpoints"


class KilledWhileSaving(Exception):
    """Stands for SIGKILL in the middle of a checkpoint save: nothing after it runs."""


def sft_trainer(output_dir, **kwargs) -> ShapedSFTTrainer:
    """Six steps of the diversity loss, a checkpoint every 2 steps (optimizer and RNG state included)."""
    values = dict(max_steps=6, per_device_train_batch_size=2, shaping_preset="diversity", save_strategy="steps",
                  save_steps=2, save_only_model=False)  # fmt: skip
    values.update(kwargs)
    model = build_tiny_model(len(TOK), tokenizer=TOK, hidden_size=32, num_layers=1, seed=0)
    return ShapedSFTTrainer(model=model, args=config(output_dir, **values), train_dataset=text_dataset(),
                            processing_class=TOK)  # fmt: skip


def weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7, msg=key)


def tree(folder: Path) -> dict:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = sft_trainer(tmp_path_factory.mktemp("full"))
    trainer.train()
    return weights(trainer)


def test_trainer_state_is_the_last_file_a_checkpoint_save_writes(tmp_path, monkeypatch):
    # The definition of "complete" rests on this order of transformers' Trainer._save_checkpoint (and TRL's SFT one)
    seen = {}
    save_to_json = TrainerState.save_to_json

    def record(state, json_path):
        folder = Path(json_path).parent
        seen[folder.name] = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        save_to_json(state, json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", record)
    trainer = sft_trainer(tmp_path, max_steps=4)
    trainer.train()
    for name in ("checkpoint-2", "checkpoint-4"):
        written = {str(p.relative_to(tmp_path / name)) for p in (tmp_path / name).rglob("*") if p.is_file()}
        assert "model.safetensors" in seen[name] and "optimizer.pt" in seen[name] and "rng_state.pth" in seen[name]
        assert written == seen[name] | {"trainer_state.json"}  # nothing was written after trainer_state.json
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    complete = {name: entry["complete"] for name, entry in manifest["checkpoints"].items()}
    assert complete == {"checkpoint-2": True, "checkpoint-4": True}


def _kill_before_trainer_state(trainer, monkeypatch):
    # model weights, optimizer and scheduler are on disk; the RNG state and trainer_state.json never come
    save_rng_state = trainer._save_rng_state

    def killed(output_dir):
        if trainer.state.global_step == 4:
            raise KilledWhileSaving
        save_rng_state(output_dir)

    monkeypatch.setattr(trainer, "_save_rng_state", killed)


def _kill_after_trainer_state(trainer, monkeypatch):
    # every Trainer file is written, but the run dies before its save finished (e.g. a DeepSpeed rank still writing,
    # TRL's files written after trainer_state.json): only the run manifest knows
    save_to_json = TrainerState.save_to_json

    def killed(state, json_path):
        save_to_json(state, json_path)
        if state.global_step == 4:
            raise KilledWhileSaving

    monkeypatch.setattr(TrainerState, "save_to_json", killed)


@pytest.mark.parametrize("kill", [_kill_before_trainer_state, _kill_after_trainer_state])
def test_a_run_killed_while_saving_resumes_from_the_previous_complete_checkpoint(
    kill, uninterrupted, tmp_path, monkeypatch, caplog
):
    first = sft_trainer(tmp_path)
    with monkeypatch.context() as patch:
        kill(first, patch)
        with pytest.raises(KilledWhileSaving):
            first.train()
    assert (tmp_path / "checkpoint-4" / "model.safetensors").is_file()
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-4")  # what stock resume would load
    assert checkpoint_problem(tmp_path / "checkpoint-4") is not None

    resumed = sft_trainer(tmp_path)
    with caplog.at_level(logging.WARNING, logger=CHECKPOINT_LOGGER):
        resumed.train(resume_from_checkpoint=True)
    skipped = [r.getMessage() for r in caplog.records if "Skipping the partial checkpoint" in r.getMessage()]
    assert len(skipped) == 1 and str(tmp_path / "checkpoint-4") in skipped[0]
    # it restarted at step 2 (the complete checkpoint) and computed steps 3-6 itself
    assert [h["step"] for h in resumed.state.log_history if "loss" in h][-4:] == [3, 4, 5, 6]
    assert_same_weights(weights(resumed), uninterrupted)
    # the partial folder was saved again, completely, by the resumed run
    assert checkpoint_problem(tmp_path / "checkpoint-4") is None
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")


def test_resume_values_that_cannot_resume_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="resume_from_checkpoint=True: no complete checkpoint in output_dir"):
        resolve_resume(True, tmp_path)
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5, "log_hi')  # cut mid-write
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "trainer_state.json").write_text(json.dumps({"global_step": 6}))  # stale file
    (tmp_path / "checkpoint-9").mkdir()  # nothing written yet
    assert "not valid JSON" in checkpoint_problem(tmp_path / "checkpoint-5")
    assert "global_step=6" in checkpoint_problem(tmp_path / "checkpoint-7")
    assert "no trainer_state.json" in checkpoint_problem(tmp_path / "checkpoint-9")
    for value in (True, "true", "last", "True"):
        assert resolve_resume(value, tmp_path) == str(tmp_path / "checkpoint-3")
    for value in (None, False, "false", ""):
        assert resolve_resume(value, tmp_path) is None
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=.*checkpoint-5.*not valid JSON.*checkpoint-3"):
        resolve_resume(str(tmp_path / "checkpoint-5"), tmp_path)
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=.*nowhere.*not a checkpoint-<step> folder"):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    # and the trainer refuses too, before training
    trainer = sft_trainer(tmp_path / "run")
    with pytest.raises(ValueError, match="resume_from_checkpoint=True: no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0


def test_a_newest_checkpoint_the_manifest_marks_incomplete_is_passed_over(tmp_path):
    # Both folders have a valid trainer_state.json; the manifest says the run stopped while saving checkpoint-4
    # (e.g. another process's shard or a file written after the state was missing): the one rule the trainers and the
    # study runner share takes checkpoint-2
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    runs = {
        "checkpoint-2": {"run": "a", "complete": True, "seq": 1},
        "checkpoint-4": {"run": "a", "complete": False, "seq": 2},
    }
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"runs": {"a": {"parent": None}}, "checkpoints": runs}))
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")  # transformers' rule
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ValueError, match="stopped while saving it.*newest complete checkpoint there is .*checkpoint-2"):
        resolve_resume(str(tmp_path / "checkpoint-4"), tmp_path)


def _user_files(output_dir: Path) -> dict:
    """A user's README.md and their own `checkpoint-100` folder (which sorts oldest by mtime)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "README.md").write_text("# My project\n\nNotes I keep here.\n")
    (output_dir / "checkpoint-100").mkdir()
    (output_dir / "checkpoint-100" / "weights.bin").write_bytes(b"mine")
    past = 1_000_000_000
    os.utime(output_dir / "checkpoint-100", (past, past))
    return tree(output_dir)


def test_rotation_and_the_model_card_leave_the_users_files_alone(tmp_path, caplog):
    before = _user_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger=CHECKPOINT_LOGGER):
        trainer = sft_trainer(tmp_path, max_steps=4, save_steps=1, save_total_limit=2)
    # warned at construction, before anything is written
    assert any("README.md was not written by trl_shaped" in r.getMessage() for r in caplog.records)
    seen = []  # save_total_limit as callbacks (trackers) see it

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen.append(args.save_total_limit)

        def on_save(self, args, state, control, **kwargs):
            seen.append(args.save_total_limit)

    trainer.add_callback(Record())
    trainer.train()
    assert seen == [2] * 5
    for name in ("checkpoint-3", "checkpoint-4"):  # the recorded config is the user's
        saved = torch.load(tmp_path / name / "training_args.bin", weights_only=False)
        assert saved.save_total_limit == 2
    after = tree(tmp_path)
    assert {k: after.get(k) for k in before} == before  # README.md and checkpoint-100 untouched
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-3", "checkpoint-4"]
    card = (tmp_path / MODEL_CARD_NAME).read_text()
    assert "trl_shaped" in card and "2512.22955" in card
    assert trainer.args.save_total_limit == 2 and trainer.args.output_dir == str(tmp_path)  # restored
    assert not list(tmp_path.glob("_model_card_*"))  # the scratch directory is gone


def test_a_resumed_run_rotates_its_parents_checkpoints_but_not_another_runs(tmp_path):
    sft_trainer(tmp_path, max_steps=2, save_steps=1).train()  # run A: checkpoint-1, checkpoint-2
    # run B resumes A and keeps 2 checkpoints: A's are its own lineage, so they rotate out
    sft_trainer(tmp_path, max_steps=4, save_steps=1, save_total_limit=2).train(resume_from_checkpoint=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    # run C starts afresh in the same directory: B's checkpoints are not its own and stay
    sft_trainer(tmp_path, max_steps=2, save_steps=1, save_total_limit=1).train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    runs = {name: entry["run"] for name, entry in manifest["checkpoints"].items()}
    assert runs["checkpoint-3"] == runs["checkpoint-4"] != runs["checkpoint-2"]
    parent_of_b = manifest["runs"][runs["checkpoint-3"]]
    assert parent_of_b["resumed_from"] == "checkpoint-2" and parent_of_b["parent"] in manifest["runs"]
    assert manifest["runs"][runs["checkpoint-2"]]["parent"] is None


def test_a_save_into_a_users_checkpoint_folder_stops_before_writing(tmp_path):
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoint-2" / "notes.txt").write_text("mine")
    trainer = sft_trainer(tmp_path, max_steps=4)
    with pytest.raises(ValueError, match=r"checkpoint-2 exists and no trl_shaped run wrote it"):
        trainer.train()
    assert tree(tmp_path / "checkpoint-2") == {"notes.txt": b"mine"}
    assert not (tmp_path / "README.md").exists()  # stopped before TRL's model card too


def test_the_model_card_replaces_only_a_card_trl_shaped_wrote(tmp_path, caplog):
    trainer = sft_trainer(tmp_path)
    trainer.create_model_card(model_name="tiny")
    readme = tmp_path / "README.md"
    assert "trl_shaped" in readme.read_text()
    trainer.create_model_card(model_name="tiny-2")
    assert "tiny-2" in readme.read_text() and not (tmp_path / MODEL_CARD_NAME).exists()  # ours: replaced
    edited = readme.read_text() + "\nMy own notes.\n"
    readme.write_text(edited)  # a user edit makes it theirs
    with caplog.at_level(logging.WARNING, logger=CHECKPOINT_LOGGER):
        trainer.create_model_card(model_name="tiny-3")
    assert readme.read_text() == edited
    assert "tiny-3" in (tmp_path / MODEL_CARD_NAME).read_text()
    trainer.create_model_card(model_name="tiny-4")  # the fallback card is ours: replaced
    assert "tiny-4" in (tmp_path / MODEL_CARD_NAME).read_text()
    (tmp_path / MODEL_CARD_NAME).write_text("also mine")
    with caplog.at_level(logging.WARNING, logger=CHECKPOINT_LOGGER):
        trainer.create_model_card(model_name="tiny-5")
    assert readme.read_text() == edited and (tmp_path / MODEL_CARD_NAME).read_text() == "also mine"
    assert any("Not writing a model card" in r.getMessage() for r in caplog.records)


def test_grpo_keeps_the_users_files_and_resumes_past_a_partial_checkpoint(tmp_path, monkeypatch, caplog):
    def trainer(output_dir, **kwargs):
        model, tok = tiny_policy()
        args = grpo_config(output_dir, max_steps=3, save_strategy="steps", save_steps=1, **kwargs)
        return ShapedGRPOTrainer(model, [varied_reward], args,
                                 train_dataset=arithmetic_prompts(), processing_class=tok)  # fmt: skip

    full = trainer(tmp_path / "full")
    full.train()
    before = _user_files(tmp_path / "run")
    first = trainer(tmp_path / "run", save_total_limit=1)
    with monkeypatch.context() as patch:
        save_rng_state = first._save_rng_state

        def killed(output_dir):
            if first.state.global_step == 3:
                raise KilledWhileSaving
            save_rng_state(output_dir)

        patch.setattr(first, "_save_rng_state", killed)
        with pytest.raises(KilledWhileSaving):
            first.train()
    resumed = trainer(tmp_path / "run", save_total_limit=1)
    with caplog.at_level(logging.WARNING, logger=CHECKPOINT_LOGGER):
        resumed.train(resume_from_checkpoint=True)
    assert any(str(tmp_path / "run" / "checkpoint-3") in r.getMessage() for r in caplog.records)
    assert_same_weights(weights(resumed), weights(full))
    after = tree(tmp_path / "run")
    assert {k: after.get(k) for k in before} == before
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-3"]
    assert "trl_shaped" in (tmp_path / "run" / MODEL_CARD_NAME).read_text()


def test_the_cli_resumes_a_run_killed_by_sigkill_while_saving(tmp_path):
    import importlib.util
    import signal
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    from trl_shaped.cli import dispatch

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_tiny", root / "recipes" / "make_tiny.py")
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)
    tiny = make_tiny.make_tiny(tmp_path / "tiny", num_train=40, num_test=4, hidden_size=32)

    def argv(output_dir):
        return ["sft", "--config", str(root / "recipes" / "tiny_sft.yaml"), "--model_name_or_path", str(tiny / "model"),
                "--dataset_data_files", f"train={tiny / 'data' / 'sft.jsonl'}",
                "--eval_strategy", "no", "--max_steps", "6", "--per_device_train_batch_size", "4",
                "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(output_dir)]  # fmt: skip

    # SIGKILL in the middle of the step-4 save: weights and optimizer written, RNG state and trainer_state.json not
    killer = (
        "import os, signal, sys\n"
        "from transformers import Trainer\n"
        "save = Trainer._save_rng_state\n"
        "def killed(self, output_dir):\n"
        "    if self.state.global_step == 4:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    save(self, output_dir)\n"
        "Trainer._save_rng_state = killed\n"
        "from trl_shaped.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", killer, *argv(tmp_path / "cut")], capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (tmp_path / "cut" / "checkpoint-4" / "model.safetensors").is_file()
    assert not (tmp_path / "cut" / "checkpoint-4" / "trainer_state.json").exists()

    resumed = dispatch([*argv(tmp_path / "cut"), "--resume_from_checkpoint", "true"])
    assert resumed.state.global_step == 6 and checkpoint_problem(tmp_path / "cut" / "checkpoint-4") is None
    dispatch(argv(tmp_path / "full"))
    assert_same_weights(
        AutoModelForCausalLM.from_pretrained(tmp_path / "cut").state_dict(),
        AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict(),
    )


def test_the_manifest_forgets_a_finished_checkpoint_deleted_by_hand(tmp_path):
    from trl_shaped.checkpoints import RunManifest

    manifest = RunManifest(tmp_path)
    manifest.add_run("a", None, None)
    for name, complete in (("checkpoint-1", True), ("checkpoint-2", True), ("checkpoint-3", False)):
        manifest.data["checkpoints"][name] = {"run": "a", "complete": complete, "seq": 1}
    manifest.save()
    (tmp_path / "checkpoint-2").mkdir()
    reread = RunManifest(tmp_path)
    # checkpoint-1 was deleted by hand: a user's later checkpoint-1 is not ours; checkpoint-3 is a save under way
    assert reread.checkpoint("checkpoint-1") is None
    assert reread.checkpoint("checkpoint-2")["complete"] and reread.checkpoint("checkpoint-3") is not None
    assert reread.lineage("a") == {"a"}


def test_the_end_of_training_clean_up_keeps_the_users_folder(tmp_path):
    # Trainer's rule for save_total_limit=1 with a best checkpoint: at the end, delete every other checkpoint
    before = _user_files(tmp_path)
    trainer = ShapedSFTTrainer(
        model=build_tiny_model(len(TOK), tokenizer=TOK, hidden_size=32, num_layers=1, seed=0),
        args=config(tmp_path, max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=1,
                    eval_strategy="steps", eval_steps=1, save_total_limit=1, load_best_model_at_end=True,
                    metric_for_best_model="loss", greater_is_better=True),  # the worst eval loss: an early step
        train_dataset=text_dataset(), eval_dataset=text_dataset(4), processing_class=TOK,
    )  # fmt: skip
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint).name
    assert best != "checkpoint-4"
    after = tree(tmp_path)
    assert {k: after.get(k) for k in before} == before
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == sorted(["checkpoint-100", best])
