"""Launchable grpo recipe: `accelerate launch --config_file accelerate_configs/<file>.yaml recipes/grpo.py --config recipes/<recipe>.yaml`.

The same code as `trl-shaped grpo` (trl_shaped/scripts/grpo.py); command-line flags override the YAML.
"""

from trl_shaped.scripts.grpo import run

if __name__ == "__main__":
    run()
