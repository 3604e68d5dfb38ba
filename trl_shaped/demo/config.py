"""`DemoConfig`: the settings of `trl-shaped demo`, a small study on the built-in task.

The demo is a `StudyConfig` (see `trl_shaped.study.config`) with its own report directory: by default ce, precision
and diversity with six seeds (full profile) or two (`--quick`), on the built-in arithmetic task with a byte-level BPE
vocabulary of 512 tokens and the paper's k = 100.
"""

from dataclasses import dataclass, field

from ..study.config import ALL_PRESETS, BUILTIN_PROFILES, StudyConfig

__all__ = ["ALL_PRESETS", "BUILTIN_PROFILES", "DemoConfig"]


@dataclass
class DemoConfig(StudyConfig):
    """Configuration of the built-in demo (`trl-shaped demo`, `trl_shaped.demo.run_demo`): every field of
    `StudyConfig`, with the report in `demo_report/`."""

    output_dir: str = field(default="demo_report", metadata={"help": "Directory of the demo's study and report."})
