"""Launchable sft recipe: `accelerate launch --config_file accelerate_configs/<file>.yaml recipes/sft.py --config recipes/<recipe>.yaml`.

The same code as `trl-shaped sft` (trl_shaped/scripts/sft.py); command-line flags override the YAML.
"""

from trl_shaped.scripts.sft import run

if __name__ == "__main__":
    run()
