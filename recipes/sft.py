"""Launchable sft recipe (the code of `trl-shaped sft`, trl_shaped/scripts/sft.py):

    accelerate launch --config_file accelerate_configs/<file>.yaml recipes/sft.py --config recipes/<recipe>.yaml

Command-line flags override the YAML's values.
"""

from trl_shaped.scripts import end_launched_process
from trl_shaped.scripts.sft import run

if __name__ == "__main__":
    run()
    end_launched_process()
