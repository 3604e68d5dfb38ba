"""The `main` functions behind `trl-shaped sft|grpo|eval|demo` and `recipes/*.py` (TRL's script layout).

Each module has `make_parser(prog)`, `main(...)` and `run(argv)`; `parse_or_exit` turns a bad value into the
parser's usage message and exit status 2 instead of a traceback. A process that `accelerate launch` started ends
through `end_launched_process`.
"""

import logging
import os
import sys


def parse_or_exit(parser, argv=None) -> tuple:
    """`parser.parse_args_and_config(argv)`, with a config's ValueError (a bad value) reported as a usage error."""
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as error:  # raised by the config dataclasses' validation, before any compute
        parser.error(str(error))


def train_and_save(trainer, script_args, training_args):
    """The end of `trl-shaped sft|grpo`: train (resuming when asked), save, push when asked, then close the trackers
    and the process group, so that no rank is left to tear down gloo/NCCL at interpreter exit."""
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
