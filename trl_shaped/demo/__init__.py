"""The built-in demo (`trl-shaped demo`): a small study (`trl_shaped.study`) of shaping presets x seeds on a generated
reasoning task: stage 1, GRPO from each stage-1 checkpoint, evaluation before and after RL, and a report that leads
with the verdicts on the paper's claims.

    from trl_shaped.demo import DemoConfig, run_demo
    report_dir = run_demo(DemoConfig(quick=True))

`run_demo` is imported on first use, so that parsing a `DemoConfig` does not load the trainers.
"""

from .config import DemoConfig

__all__ = ["DemoConfig", "run_demo"]


def run_demo(config: DemoConfig | None = None):
    """Run the demo (a study on the built-in task) and return its report directory.

    Args:
        config (`DemoConfig`, *optional*): the settings; the default (full) profile when `None`.
    """
    from ..study.runner import run_study

    return run_study(config or DemoConfig())
