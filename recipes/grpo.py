"""Launchable grpo recipe (the code of `trl-shaped grpo`, trl_shaped/scripts/grpo.py):

    accelerate launch --config_file accelerate_configs/<file>.yaml recipes/grpo.py --config recipes/<recipe>.yaml

Command-line flags override the YAML's values.
"""

from trl_shaped.scripts import end_launched_process
from trl_shaped.scripts.grpo import run

if __name__ == "__main__":
    run()
    end_launched_process()
