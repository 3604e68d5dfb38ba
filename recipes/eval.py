"""Launchable eval recipe: `accelerate launch --config_file accelerate_configs/<file>.yaml recipes/eval.py --config recipes/<recipe>.yaml`.

The same code as `trl-shaped eval` (trl_shaped/scripts/eval.py); command-line flags override the YAML.
"""

from trl_shaped.scripts.eval import run

if __name__ == "__main__":
    run()
