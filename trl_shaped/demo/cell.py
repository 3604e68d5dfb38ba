"""One cell of a study on the built-in task, in its own process (started by `trl_shaped.study.run_study`):

python -m trl_shaped.demo.cell <study_config.json> <preset> <seed> <cell_dir>
"""

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from trl_shaped.study.config import StudyConfig

    from .pipeline import run_cell

    config_path, preset, seed, cell = argv if argv is not None else sys.argv[1:]
    config = StudyConfig(**json.loads(Path(config_path).read_text()))
    run_cell(config, preset, int(seed), Path(cell))


if __name__ == "__main__":
    main()
