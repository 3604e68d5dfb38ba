import sys

from trl_shaped.cli import main

if __name__ == "__main__":
    sys.exit(main())
