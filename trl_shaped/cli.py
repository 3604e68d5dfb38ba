"""`trl-shaped` (also `python -m trl_shaped`): the command line.

    trl-shaped sft  --config recipes/stage1.yaml --shaping_preset precision --output_dir runs/stage1_precision
    trl-shaped grpo --config recipes/rl_paper.yaml --model_name_or_path runs/stage1_precision
    trl-shaped eval --model_name_or_path runs/rl_precision --dataset_name data/test.jsonl
    trl-shaped eval --suite recipes/eval_suite.yaml --model_name_or_path runs/rl_precision
    trl-shaped demo --quick

Every subcommand is parsed with TRL's `TrlParser`: `--config file.yaml` sets values and command-line flags
override them, as with `trl`. A missing, unreadable or malformed config file is a usage error (exit status 2),
checked here for every subcommand before it starts. The subcommands run in this process (so `accelerate launch -m
trl_shaped sft ...` works too); `sft` and `grpo` also take `--accelerate_config FILE` to start themselves under
`accelerate launch`, and `--resume_from_checkpoint true` to resume from the newest complete checkpoint of output_dir
(`trl_shaped.checkpoints`). The work itself lives in `trl_shaped/scripts/<subcommand>.py`.
"""

import argparse
import importlib
import sys
from pathlib import Path

from trl_shaped import __version__
from trl_shaped.packaged import packaged_path
from trl_shaped.scripts import config_file_problem, end_launched_process, split_config_flag

SUBCOMMANDS = {
    "sft": "stage 1: train with the shaped next-token loss (ShapedSFTTrainer)",
    "grpo": "stage 2: GRPO from a stage-1 checkpoint (ShapedGRPOTrainer)",
    "eval": "Avg@n, Cons@n, Pass@k and distribution diagnostics of a model",
    "demo": "the built-in two-stage demo on a tiny local model (--quick for the short form)",
    "study": "presets x seeds of the two-stage pipeline: intervals, paired differences, the paper's claims judged",
}
LAUNCHABLE = ("sft", "grpo")  # the subcommands that `--accelerate_config` can start under accelerate


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-shaped",
        description="Rank-aware reward-shaped next-token prediction for TRL. "
        "Run `trl-shaped <subcommand> --help` for a subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"trl-shaped {__version__}")
    subparsers = parser.add_subparsers(title="subcommands", dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, help_text in SUBCOMMANDS.items():
        # the subcommand parses its own arguments (TrlParser); this entry is only for the listing
        subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _usage_error(module, name: str, message: str):
    """Exit as argparse does on a bad argument (usage, `trl-shaped <name>: error: <message>`, status 2), with the
    subcommand's own parser when it has one, so that its usage line is shown."""
    make_parser = getattr(module, "make_parser", None)
    parser = make_parser(f"trl-shaped {name}") if make_parser else argparse.ArgumentParser(prog=f"trl-shaped {name}")
    parser.error(message)


def _launch_with_accelerate(module, name: str, args: list[str]) -> None:
    """Re-run `trl_shaped/scripts/<name>.py` under `accelerate launch --config_file <file>`."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    index = args.index("--accelerate_config")
    if index + 1 >= len(args) or args[index + 1].startswith("--"):
        _usage_error(module, name, "argument --accelerate_config: expected one argument (an accelerate config file)")
    config_file = args[index + 1]
    if not Path(config_file).is_file():
        _usage_error(module, name, f"argument --accelerate_config: {config_file!r} is not a file")
    script_args = args[:index] + args[index + 2 :]
    script = Path(__file__).parent / "scripts" / f"{name}.py"
    launch_command(launch_command_parser().parse_args(["--config_file", config_file, str(script), *script_args]))


def _packaged_files(args: list[str]) -> list[str]:
    # `--config recipes/x.yaml` and `--accelerate_config accelerate_configs/y.yaml` name the files shipped with the
    # package when they do not exist where the command runs (trl_shaped/packaged.py)
    return [
        packaged_path(arg) if index > 0 and args[index - 1] in ("--config", "--suite", "--accelerate_config") else arg
        for index, arg in enumerate(args)
    ]


def dispatch(argv: list[str] | None = None):
    """Dispatch `argv` (default: `sys.argv[1:]`) to a subcommand; returns what the subcommand's `run` returns
    (the trainer, the evaluation results, the demo's report directory)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # --help, --version, or an error naming the valid subcommands
        parser.print_help()
        return None
    name, args = argv[0], argv[1:]
    module = importlib.import_module(f"trl_shaped.scripts.{name}")
    # Every subcommand takes `--config FILE`: a missing, unreadable or malformed file is a usage error here, before
    # the subcommand (or `accelerate launch`, which would fail once per process) starts
    args = _packaged_files(split_config_flag(args))
    problem = config_file_problem(args)
    if problem is not None:
        _usage_error(module, name, problem)
    if name in LAUNCHABLE and "--accelerate_config" in args:
        return _launch_with_accelerate(module, name, args)
    return module.run(args, prog=f"trl-shaped {name}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the subcommand and return the process exit status (errors exit through SystemExit).
    A process started by `accelerate launch` exits here instead (`end_launched_process`)."""
    dispatch(argv)
    return end_launched_process(0)


if __name__ == "__main__":
    sys.exit(main())
