"""Nothing lost: resume from the newest *complete* checkpoint, and never delete or overwrite what a run did not write.

Facts from transformers 5.23 (`Trainer`) this module builds on:

- `Trainer._save_checkpoint` writes `checkpoint-<global_step>/` in this order: the model (weights, config, tokenizer,
  `training_args.bin`), the optimizer and scheduler, the scaler, the RNG state, then `trainer_state.json`; then it
  pushes and rotates (deletes old checkpoints, `save_total_limit`). TRL's trainers write the model card
  (`output_dir/README.md`) before that, and TRL's GRPOTrainer may add `entropy_ctrl_state.json` after it.
- `train(resume_from_checkpoint=True)` takes `get_last_checkpoint(output_dir)`: the highest-numbered `checkpoint-*`
  folder, complete or not. A run killed while it saves leaves a partial folder there, and every resume fails on it.
- Rotation (`rotate_checkpoints`, and the end-of-training clean-up with `save_total_limit=1`) deletes every
  `checkpoint-*` folder of `output_dir` beyond the limit, whoever made it; the model card replaces any `README.md`.

So a checkpoint is *complete* when its `trainer_state.json` (the last file Trainer writes) parses and names the
folder's step, and, for a folder our run manifest knows, when the manifest says its save finished (which also covers
files written after `trainer_state.json` and the other processes' shards). The manifest (`MANIFEST_NAME` in the
output directory, not pushed to the Hub: `push_to_hub` skips `_*` files) records which run made which checkpoint, the
run each run resumed, and the hash of the model card it wrote; `SafeCheckpointsMixin` only ever deletes checkpoints of
its own run or of the runs it resumed, and writes the card to `MODEL_CARD_NAME` when `README.md` is someone else's.
"""

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

MANIFEST_NAME = "_trl_shaped_run.json"
MODEL_CARD_NAME = "MODEL_CARD.md"  # where the card goes when output_dir's README.md is not ours
TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME
TRAINING_ARGS_NAME = "training_args.bin"  # transformers.trainer.TRAINING_ARGS_NAME
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils._re_checkpoint


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunManifest:
    """The record `SafeCheckpointsMixin` keeps in an output directory (a JSON file, replaced atomically).

    Layout: `runs` maps a run id to the run it resumed (`parent`, or None) and the checkpoint it resumed from;
    `checkpoints` maps a folder name to the run that made it, whether its save finished (`complete`) and a save
    counter (`seq`, the order of the saves); `model_card` is the file the card went to and its sha256.

    Args:
        directory (`str` or `Path`): the output directory.
    """

    def __init__(self, directory):
        self.path = Path(directory) / MANIFEST_NAME
        self.data = {"runs": {}, "checkpoints": {}, "model_card": None, "seq": 0}
        if self.path.is_file():
            try:
                self.data.update(json.loads(self.path.read_text()))
            except (ValueError, OSError) as error:
                # Written atomically, so only a hand edit breaks it; without it nothing counts as ours (nothing is
                # deleted, README.md is kept), which is the safe side.
                logger.warning(f"Ignoring the unreadable run manifest {self.path} ({error}).")
        # A finished checkpoint deleted by hand is forgotten, so that a later folder of that name is not taken for
        # ours (an unfinished entry may be a save whose folder does not exist yet)
        self.data["checkpoints"] = {
            name: entry
            for name, entry in self.data["checkpoints"].items()
            if not entry.get("complete") or (self.path.parent / name).is_dir()
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{MANIFEST_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)  # a reader never sees a half-written manifest

    def checkpoint(self, name: str) -> dict | None:
        return self.data["checkpoints"].get(name)

    def add_run(self, run_id: str, parent: str | None, resumed_from: str | None) -> None:
        self.data["runs"].setdefault(run_id, {"parent": parent, "resumed_from": resumed_from})

    def lineage(self, run_id: str) -> set[str]:
        """`run_id` and every run it resumed, directly or through others."""
        runs, seen = self.data["runs"], set()
        while run_id is not None and run_id not in seen:
            seen.add(run_id)
            run_id = runs.get(run_id, {}).get("parent")
        return seen

    def owns_model_card(self, path: Path) -> bool:
        """Whether `path` is the card a run recorded here wrote, unchanged since (a user's edit makes it theirs)."""
        card = self.data.get("model_card")
        return bool(card) and card["path"] == path.name and path.is_file() and _sha256(path) == card["sha256"]


def checkpoint_problem(path) -> str | None:
    """Why the checkpoint folder `path` is not complete (see the module docstring), or None when it is."""
    path = Path(path)
    match = CHECKPOINT_RE.match(path.name)
    if match is None or not path.is_dir():
        return "it is not a checkpoint-<step> folder"
    entry = RunManifest(path.parent).checkpoint(path.name)
    if entry is not None and not entry.get("complete"):
        return "the run that wrote it stopped while saving it"
    state = path / TRAINER_STATE_NAME
    if not state.is_file():
        return f"it has no {TRAINER_STATE_NAME}, the file Trainer writes last"
    try:
        step = json.loads(state.read_text()).get("global_step")
    except (ValueError, OSError):
        return f"its {TRAINER_STATE_NAME} is not valid JSON (cut while written)"
    if step != int(match.group(1)):
        return f"its {TRAINER_STATE_NAME} says global_step={step}"
    return None


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest complete `checkpoint-<step>` folder of `output_dir` (None if there is none).

    Unlike transformers' `get_last_checkpoint`, a newer partial folder (a run killed while saving) is skipped, with a
    warning that names it and says why.

    Args:
        output_dir (`str` or `Path`): the directory holding the `checkpoint-*` folders.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    folders = [p for p in output_dir.iterdir() if CHECKPOINT_RE.match(p.name) and p.is_dir()]
    for folder in sorted(folders, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning(f"Skipping the partial checkpoint {folder}: {problem}.")
    return None


def resolve_resume(resume_from_checkpoint, output_dir) -> str | None:
    """What `train(resume_from_checkpoint=...)` should load: None, or a complete checkpoint folder.

    Args:
        resume_from_checkpoint (`bool`, `str` or None): True (or the strings "true"/"last", as a command line gives
            them) for the newest complete checkpoint of `output_dir`; a path, which must be a complete checkpoint;
            None, False or "false" for a fresh start.
        output_dir (`str`): where True looks.

    Raises:
        ValueError: naming `resume_from_checkpoint` when there is nothing complete to resume from.
    """
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "last", "false", ""):
        resume_from_checkpoint = resume_from_checkpoint.lower() in ("true", "last")
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"resume_from_checkpoint=True: no complete checkpoint in output_dir={str(output_dir)!r}; start "
                "without resume_from_checkpoint, or pass the path of a checkpoint folder"
            )
        return found
    problem = checkpoint_problem(resume_from_checkpoint)
    if problem is not None:
        hint = last_complete_checkpoint(Path(resume_from_checkpoint).parent)
        raise ValueError(
            f"resume_from_checkpoint={str(resume_from_checkpoint)!r} cannot be resumed: {problem}. "
            + (f"The newest complete checkpoint there is {hint!r}." if hint else "Pass a complete checkpoint folder.")
        )
    return str(resume_from_checkpoint)


class SafeCheckpointsMixin:
    """Mixed into a `transformers.Trainer` subclass (before the TRL trainer in its bases): nothing of the user's lost.

    - `train(resume_from_checkpoint=True)` resumes from `last_complete_checkpoint(output_dir)`, and a path must be a
      complete checkpoint (see `resolve_resume`); a partial newer folder is skipped with a warning.
    - Every checkpoint save is recorded in the output directory's `RunManifest` before it starts and when it ends,
      after all processes are done with it.
    - `save_total_limit` rotation deletes only checkpoints made by this run or by the runs it resumed (transformers
      deletes any `checkpoint-*` folder); the limit counts those. A folder named like the checkpoint about to be
      saved that no trl_shaped run made stops the save with an error before anything is written into it.
    - The model card replaces `output_dir/README.md` only when a trl_shaped run wrote that file and nobody changed
      it since; otherwise a warning says so (at construction, before any write) and the card goes to
      `MODEL_CARD_NAME` beside it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._run_id, self._run_origin = None, (None, None)
        # The bound `create_model_card` of the whole class chain (TRL's and a subclass's additions); TRL calls
        # `self.create_model_card` when it saves a checkpoint and when it pushes, so wrapping it here guards both.
        write_card = self.create_model_card

        @functools.wraps(write_card)
        def create_model_card(*args, **kwargs):
            return self._guarded_model_card(write_card, *args, **kwargs)

        self.create_model_card = create_model_card
        readme = Path(self.args.output_dir) / "README.md"
        if self.is_world_process_zero() and readme.is_file() and not RunManifest(readme.parent).owns_model_card(readme):
            logger.warning(
                f"{readme} was not written by trl_shaped: it is kept, and this run writes its model card to "
                f"{readme.with_name(MODEL_CARD_NAME)} instead (push_to_hub then uploads your README.md as the card)."
            )

    # ------------------------------------------------------------------ resume
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """`Trainer.train`, resuming from a complete checkpoint only (`resolve_resume`) and rotating only this run's
        checkpoints. Args: as `transformers.Trainer.train`."""
        resume = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        self._run_id = uuid.uuid4().hex[:12]
        parent = None
        if resume is not None:
            entry = RunManifest(Path(resume).parent).checkpoint(Path(resume).name)
            if entry is not None and Path(resume).parent.resolve() == Path(self.args.output_dir).resolve():
                parent = entry["run"]
        self._run_origin = (parent, Path(resume).name if resume else None)
        output = super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        if self.args.should_save and self.args.save_total_limit == 1 and self.state.best_model_checkpoint:
            # Trainer's end-of-training rule for save_total_limit=1 (skipped in `_finalize_training`): keep the best
            # checkpoint only
            run_dir = Path(self._get_output_dir(trial=trial))
            self._rotate(run_dir, keep=0, protected={self.state.best_model_checkpoint})
        return output

    @contextlib.contextmanager
    def _limit_hidden_from_trainer(self):
        # Transformers rotates (and cleans up at the end of training) over every checkpoint-* folder; this class
        # rotates its own. The limit is hidden from Trainer only inside the two methods that rotate, so that the
        # config callbacks see and the checkpoints record keeps the user's value.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            yield limit
        finally:
            self.args.save_total_limit = limit

    def _finalize_training(self, trial, num_train_samples, start_time):
        if not (self.args.save_total_limit == 1 and self.state.best_model_checkpoint):
            return super()._finalize_training(trial, num_train_samples, start_time)
        with self._limit_hidden_from_trainer():  # its clean-up would delete other runs' checkpoints; `train` rotates
            return super()._finalize_training(trial, num_train_samples, start_time)

    # ------------------------------------------------------------------ saving
    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"checkpoint-{self.state.global_step}"
        folder = run_dir / name
        # Folder first, then the manifest: the process that records the save writes the manifest before the folder
        # exists, so every process reaches the same verdict.
        if folder.is_dir() and any(folder.iterdir()) and RunManifest(run_dir).checkpoint(name) is None:
            raise ValueError(
                f"{folder} exists and no trl_shaped run wrote it: saving step {self.state.global_step} would write "
                "into it. Move it away (or choose another output_dir) and resume with resume_from_checkpoint=True."
            )
        if self._run_id is None:  # a save outside `train` (a direct `_save_checkpoint` call)
            self._run_id = uuid.uuid4().hex[:12]
        if self.args.should_save:
            manifest = RunManifest(run_dir)
            manifest.add_run(self._run_id, *self._run_origin)
            manifest.data["seq"] += 1
            manifest.data["checkpoints"][name] = {"run": self._run_id, "complete": False, "seq": manifest.data["seq"]}
            manifest.save()
        with self._limit_hidden_from_trainer() as limit:
            super()._save_checkpoint(model, trial)
        if self.args.should_save and (folder / TRAINING_ARGS_NAME).is_file():
            torch.save(self.args, folder / TRAINING_ARGS_NAME)  # written with the limit hidden: record the user's
        self.accelerator.wait_for_everyone()  # every process's share of the checkpoint is on disk
        if self.args.should_save:
            manifest = RunManifest(run_dir)
            manifest.data["checkpoints"][name]["complete"] = True
            manifest.save()
            if limit is not None and limit > 0:
                protected = {str(folder)} | {self.state.best_model_checkpoint or ""}
                self._rotate(run_dir, keep=limit, protected=protected)

    def _rotate(self, run_dir: Path, keep: int, protected: set) -> None:
        """Delete the oldest checkpoints of this run's lineage (partial ones first) until `keep` remain, never one
        in `protected` (paths); as transformers' `rotate_checkpoints`, but over our own folders only."""
        manifest = RunManifest(run_dir)
        ours = manifest.lineage(self._run_id)
        protected = {str(Path(p)) for p in protected if p}
        entries = manifest.data["checkpoints"]
        own = [n for n, e in entries.items() if e["run"] in ours and (run_dir / n).is_dir()]
        own.sort(key=lambda n: (entries[n]["complete"], entries[n]["seq"]))
        remaining = len(own)
        keep = max(keep, len([n for n in own if str(run_dir / n) in protected]))
        for name in own:
            if remaining <= keep:
                break
            if str(run_dir / name) in protected:
                continue
            logger.info(f"Deleting older checkpoint [{run_dir / name}] due to save_total_limit")
            shutil.rmtree(run_dir / name, ignore_errors=True)
            del entries[name]
            remaining -= 1
        manifest.save()

    # ------------------------------------------------------------------ model card
    def _guarded_model_card(self, write_card, *args, **kwargs):
        if not self.is_world_process_zero():
            return write_card(*args, **kwargs)  # TRL writes the card on the main process only
        output_dir = Path(self.args.output_dir)
        manifest = RunManifest(output_dir)
        for name in ("README.md", MODEL_CARD_NAME):
            target = output_dir / name
            if not target.exists() or manifest.owns_model_card(target):
                break
        else:
            logger.warning(f"Not writing a model card: README.md and {MODEL_CARD_NAME} in {output_dir} are not ours.")
            return None
        if name == "README.md":
            result = write_card(*args, **kwargs)
        else:
            # TRL (and our subclasses) write the card to `args.output_dir/README.md`: point them at a scratch
            # directory for this call, then move the card beside the user's README.md.
            original = self.args.output_dir
            with tempfile.TemporaryDirectory(dir=output_dir, prefix="_model_card_") as scratch:
                self.args.output_dir = scratch
                try:
                    result = write_card(*args, **kwargs)
                finally:
                    self.args.output_dir = original
                if (Path(scratch) / "README.md").is_file():
                    os.replace(Path(scratch) / "README.md", target)
        if target.is_file():
            manifest = RunManifest(output_dir)
            manifest.data["model_card"] = {"path": name, "sha256": _sha256(target)}
            manifest.save()
        return result
