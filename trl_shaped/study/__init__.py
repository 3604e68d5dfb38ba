"""Multi-seed studies of the shaping presets: presets x seeds of the two-stage pipeline (stage 1 -> eval -> GRPO ->
eval), cached per cell, with intervals across seeds, paired differences to ce, the paper's claims judged from them,
figures and a report.

    from trl_shaped.study import StudyConfig, run_study
    study_dir = run_study(StudyConfig(presets="ce,precision,diversity", num_seeds=3))

The built-in demo (`trl-shaped demo`) is a profile of it: `run_study(DemoConfig(quick=True))`. The built-in tasks are in
`trl_shaped/tasks/`, the cell `builtin_cell.py`; the runner (`runner.py`) starts one process per cell and `cells.py` is where
a cell's files live.

The rooms, lowest first; a module imports only from rooms below its own (tests/test_study_imports.py):

    config, stats, sources, children     the settings; intervals; the package's source; processes that end with us
    claims, commands                     the verdicts from the numbers; what a cell runs (command lines)
    cells, figures, report               a cell's files, lock and fingerprint; the figures; the report
    builtin_cell, cell_runner            the built-in cell's worker; one cell of either scale
    launchers                            where cells run: a local pool, Slurm jobs
    runner                               run_study

`run_study` is imported on first use, so that parsing a `StudyConfig` does not load the statistics or plotting.
"""

from .config import DemoConfig, StudyConfig

__all__ = ["DemoConfig", "StudyConfig", "run_study"]


def __getattr__(name):
    if name == "run_study":
        from .runner import run_study

        return run_study
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
