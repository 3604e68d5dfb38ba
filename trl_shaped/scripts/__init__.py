"""The `main` functions behind `trl-shaped sft|grpo|eval|demo` and `recipes/*.py` (TRL's script layout).

Each module has `make_parser(prog)`, `main(...)` and `run(argv)`; `parse_or_exit` turns a bad value into the
parser's usage message and exit status 2 instead of a traceback.
"""


def parse_or_exit(parser, argv=None) -> tuple:
    """`parser.parse_args_and_config(argv)`, with a config's ValueError (a bad value) reported as a usage error."""
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as error:  # raised by the config dataclasses' validation, before any compute
        parser.error(str(error))
