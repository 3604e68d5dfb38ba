"""The built-in demo as a script: `python recipes/demo.py --config recipes/demo.yaml` (= `trl-shaped demo`)."""

from trl_shaped.scripts.demo import run

if __name__ == "__main__":
    run()
