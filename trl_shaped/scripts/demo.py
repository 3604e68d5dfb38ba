"""`trl-shaped demo`: the built-in two-stage demo (`trl_shaped.study`, profile `DemoConfig`), a small study, parsed like the other
subcommands.

```bash
trl-shaped demo            # ce, precision, diversity x 6 seeds on 2 CPU cores: demo_report/
trl-shaped demo --quick    # the short form (2 seeds, fewer steps): demo_report_quick/
trl-shaped demo --task code   # the built-in code task (programs run in the sandbox): demo_report_code/
```
"""

from trl_shaped.scripts import make_trl_parser, run_script


def make_parser(prog: str | None = None):
    from trl_shaped.study import DemoConfig

    return make_trl_parser((DemoConfig,), prog)


def main(config):
    from trl_shaped.study import run_study

    report_dir = run_study(config)
    print(f"Demo report: {report_dir}")
    return report_dir


def run(argv=None, prog: str | None = None):
    """Parse `argv` (`--config file.yaml` plus overrides) and run the demo; returns the report directory."""
    return run_script(make_parser, main, argv, prog, study=True)


if __name__ == "__main__":
    run()
