"""`trl-shaped` command line. Subcommands (sft, grpo, eval, demo) are added as they land."""

import argparse

from trl_shaped import __version__


def main(argv=None):
    parser = argparse.ArgumentParser(prog="trl-shaped", description="Reward-shaped next-token prediction for TRL.")
    parser.add_argument("--version", action="version", version=f"trl-shaped {__version__}")
    parser.parse_args(argv)
    print(f"trl-shaped {__version__}")
    parser.print_help()


if __name__ == "__main__":
    main()
