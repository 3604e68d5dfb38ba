"""The built-in demo (`trl-shaped demo`): stage 1 with several shaping presets on a generated reasoning task, GRPO
from each stage-1 checkpoint, evaluation before and after RL, and a report.

    from trl_shaped.demo import DemoConfig, run_demo
    report_dir = run_demo(DemoConfig(quick=True))

`run_demo` is imported on first use, so that parsing a `DemoConfig` does not load the trainers.
"""

from .config import DemoConfig

__all__ = ["DemoConfig", "run_demo"]


def __getattr__(name):
    if name == "run_demo":
        from .pipeline import run_demo

        return run_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
