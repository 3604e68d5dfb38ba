"""Launchable eval recipe (the code of `trl-shaped eval`, trl_shaped/scripts/eval.py):

    accelerate launch --config_file accelerate_configs/<file>.yaml recipes/eval.py --config recipes/<recipe>.yaml

Command-line flags override the YAML's values. Launched on several processes, each evaluates its share of the
problems and the main process writes the files.
"""

from trl_shaped.scripts import end_launched_process
from trl_shaped.scripts.eval import run

if __name__ == "__main__":
    run()
    end_launched_process()
