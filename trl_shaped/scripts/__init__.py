"""The `main` functions behind `trl-shaped sft|grpo|eval|demo` and `recipes/*.py` (TRL's script layout).

Each module has `make_parser(prog)` (a `make_trl_parser` of its dataclasses), `main(...)` taking the parsed
dataclasses, and `run(argv, prog)`, which is `run_script(make_parser, main, argv, prog)`; `parse_or_exit` turns a bad
`--config` file or a bad value into the parser's usage message and exit status 2 instead of a traceback. A process that `accelerate
launch` started ends through `end_launched_process`.
"""

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

LOG_HISTORY = "log_history.json"  # what `trl-shaped sft|grpo` write into output_dir when training ends


def split_config_flag(argv: list[str]) -> list[str]:
    """`argv` with `--config=FILE` (which TrlParser does not read) written as `--config FILE`."""
    return [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]


def config_file_problem(argv: list[str]) -> str | None:
    """What is wrong with the `--config FILE` of `argv`, as one argparse-style line, or None when nothing is.

    TrlParser opens and parses the file itself and lets IndexError / FileNotFoundError / yaml errors through; this
    check runs first so that each becomes a usage error naming `--config` and the file.
    """
    import yaml

    flags = [i for i, arg in enumerate(argv) if arg == "--config"]
    if not flags:
        return None
    if len(flags) > 1:
        return "argument --config: given more than once"
    index = flags[0]
    if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
        return "argument --config: expected one argument (a YAML file)"
    path = argv[index + 1]
    try:
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except OSError as error:
        return f"argument --config: can't open {path!r}: {error.strerror or error}"
    except UnicodeDecodeError:
        return f"argument --config: {path!r} is not a text (UTF-8) file"
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        return f"argument --config: {path!r} is not valid YAML{where}: {problem}"
    if config is None:
        return f"argument --config: {path!r} is empty; it should hold `name: value` lines"
    if not isinstance(config, dict):
        kind = type(config).__name__
        return f"argument --config: {path!r} must hold a mapping of argument names to values, not a {kind}"
    bad_keys = [key for key in config if not isinstance(key, str)]
    if bad_keys:
        return f"argument --config: {path!r} has keys that are not argument names: {bad_keys}"
    return None


def parse_or_exit(parser, argv=None, required: dict[str, str] | None = None) -> tuple:
    """`parser.parse_args_and_config(argv)`, with every problem found before anything is loaded reported as a usage
    error (the parser's usage and one `error:` line on stderr, exit status 2) instead of a traceback: a bad `--config`
    file, a config's ValueError (a bad value), a `required` argument left unset, and a `--resume_from_checkpoint`
    that cannot resume (resolved here to a complete checkpoint folder, `trl_shaped.checkpoints.resolve_resume`).

    Args:
        parser (`TrlParser`): the subcommand's parser.
        argv (`list[str]`, *optional*): the arguments (default: `sys.argv[1:]`).
        required (`dict[str, str]`, *optional*): argument name -> what it must name, for arguments a dataclass leaves
            optional that the subcommand cannot run without.
    """
    argv = split_config_flag(list(sys.argv[1:] if argv is None else argv))
    problem = config_file_problem(argv)
    if problem is not None:
        parser.error(problem)
    try:
        parsed = parser.parse_args_and_config(argv)
    except ValueError as error:  # raised by the config dataclasses' validation, before any compute
        parser.error(str(error))
    for name, what in (required or {}).items():
        if all(getattr(group, name, None) in (None, "") for group in parsed):
            parser.error(f"argument --{name} is required: {what}")
    for group in parsed:
        if getattr(group, "resume_from_checkpoint", None) not in (None, False) and hasattr(group, "output_dir"):
            from trl_shaped.checkpoints import resolve_resume

            try:
                group.resume_from_checkpoint = resolve_resume(group.resume_from_checkpoint, group.output_dir)
            except ValueError as error:
                parser.error(f"argument --resume_from_checkpoint: {error}")
    return parsed


@contextlib.contextmanager
def study_errors_exit(prog: str):
    """Around a study: a study that cannot go on as asked (`trl_shaped.study.cells.StudyError`) ends the command
    with its message alone on stderr, no traceback: exit status 2 for a rerun refused before any compute (cells
    computed with other settings: the message names them and the ways on), 1 for failed cells."""
    from trl_shaped.study.cells import StaleCells, StudyError

    try:
        yield
    except StudyError as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(error, StaleCells) else 1)


def make_trl_parser(dataclass_types: tuple, prog: str | None = None):
    """TRL's `TrlParser` over `dataclass_types`, imported when a script runs (`trl-shaped --help` stays fast)."""
    from trl import TrlParser

    return TrlParser(dataclass_types, prog=prog)


def run_script(make_parser, main, argv=None, prog: str | None = None, *, required=None, study: bool = False):
    """The `run` of every script: parse `argv` (`--config file.yaml` plus overrides) with `make_parser(prog)`, and
    call `main` with the parsed dataclasses.

    Args:
        required (`dict[str, str]`, *optional*): arguments the subcommand cannot run without (see `parse_or_exit`).
        study (`bool`): `main` runs a study: its refusals and failed cells end the command with one line
            (`study_errors_exit`).
    """
    parser = make_parser(prog)
    parsed = parse_or_exit(parser, argv, required=required)
    if not study:
        return main(*parsed)
    with study_errors_exit(parser.prog):
        return main(*parsed)


def train_and_save(trainer, script_args, training_args):
    """The end of `trl-shaped sft|grpo`: train (resuming when asked), save, push when asked, then close the trackers
    and the process group, so that no rank is left to tear down gloo/NCCL at interpreter exit.

    `resume_from_checkpoint` was resolved by `trainer_inputs` (scripts/loading.py) and the trainers resolve it again
    the same way (`trl_shaped.checkpoints.resolve_resume`).
    """
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    # What `Trainer.end()` does; called on the accelerator because that method only exists in transformers >= 5.18
    # and pyproject.toml allows any transformers 5.
    trainer.accelerator.end_training()
    return trainer


def end_launched_process(status: int = 0) -> int:
    """End a process that `accelerate launch` (torchrun) started, after its run has finished and saved everything.

    `destroy_process_group` (see `train_and_save`) unregisters the process groups, but DDP and DeepSpeed keep
    references to them, so their gloo worker threads live on into interpreter finalization, where tearing them down
    aborts a rank now and then (SIGABRT, "terminate called without an active exception") after a successful run.
    Such a process therefore flushes its output and leaves through `os._exit`, skipping finalization. Outside a
    launcher (`WORLD_SIZE` unset or 1) this only returns `status`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return status
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def write_log_history(trainer, output_dir: str) -> Path | None:
    """Write the trainer's log history (every logged step) to `output_dir/log_history.json` on the main process, so
    that the curves of a run do not depend on whether it saved checkpoints. Returns the path (None on other ranks)."""
    if not trainer.is_world_process_zero():
        return None
    path = Path(output_dir) / LOG_HISTORY
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(trainer.state.log_history, indent=1))
    os.replace(tmp, path)  # a reader sees the whole history or none
    return path
