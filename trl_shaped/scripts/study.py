"""`trl-shaped study`: presets x seeds of the two-stage pipeline with intervals and verdicts (`trl_shaped.study`).

```bash
trl-shaped study --config recipes/study_tiny.yaml                 # the built-in task
trl-shaped study --config recipes/study_qwen3.yaml --num_seeds 5  # real scale, through the recipes
```
Rerunning the same command resumes: finished cells are skipped, an interrupted one restarts from its checkpoint.
A rerun with other settings in the same `--output_dir` stops before any compute and names them (exit status 2);
`--overwrite true` recomputes exactly the cells that differ.
"""

from trl_shaped.scripts import make_trl_parser, run_script


def make_parser(prog: str | None = None):
    from trl_shaped.study import StudyConfig

    return make_trl_parser((StudyConfig,), prog)


def main(config):
    from trl_shaped.study import run_study

    study_dir = run_study(config)
    print(f"Study report: {study_dir / 'report.md'}")
    return study_dir


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides) and run the study; returns the study directory."""
    return run_script(make_parser, main, argv, prog, study=True)


if __name__ == "__main__":
    run()
