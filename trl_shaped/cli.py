"""`trl-shaped` (also `python -m trl_shaped`): the command line.

    trl-shaped sft  --config recipes/stage1_precision.yaml --model_name_or_path Qwen/Qwen3-0.6B-Base
    trl-shaped grpo --config recipes/rl_paper.yaml --model_name_or_path runs/stage1_precision
    trl-shaped eval --model_name_or_path runs/rl_precision --dataset_name data/test.jsonl
    trl-shaped demo --quick

Every subcommand is parsed with TRL's `TrlParser`: `--config file.yaml` sets values and command-line flags
override them, as with `trl`. The subcommands run in this process (so `accelerate launch -m trl_shaped sft ...`
works too); `sft` and `grpo` also take `--accelerate_config FILE` to start themselves under `accelerate launch`.
The work itself lives in `trl_shaped/scripts/<subcommand>.py`.
"""

import argparse
import importlib
import sys
from pathlib import Path

from trl_shaped import __version__
from trl_shaped.scripts import end_launched_process

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


def _launch_with_accelerate(name: str, args: list[str]) -> None:
    """Re-run `trl_shaped/scripts/<name>.py` under `accelerate launch --config_file <file>`."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    index = args.index("--accelerate_config")
    if index + 1 >= len(args):
        raise SystemExit(f"trl-shaped {name}: error: --accelerate_config needs a file")
    config_file = args[index + 1]
    if not Path(config_file).is_file():
        raise SystemExit(f"trl-shaped {name}: error: --accelerate_config {config_file!r} is not a file")
    script_args = args[:index] + args[index + 2 :]
    script = Path(__file__).parent / "scripts" / f"{name}.py"
    launch_command(launch_command_parser().parse_args(["--config_file", config_file, str(script), *script_args]))


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
    if name in LAUNCHABLE and "--accelerate_config" in args:
        return _launch_with_accelerate(name, args)
    module = importlib.import_module(f"trl_shaped.scripts.{name}")
    return module.run(args, prog=f"trl-shaped {name}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the subcommand and return the process exit status (errors exit through SystemExit).
    A process started by `accelerate launch` exits here instead (`end_launched_process`)."""
    dispatch(argv)
    return end_launched_process(0)


if __name__ == "__main__":
    sys.exit(main())
