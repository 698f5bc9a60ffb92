"""How every ``taskdash`` subcommand is declared, wherever its arguments live.

Its own module because the command modules of the packages (``tcp/cli.py``, ``periodic/cli.py``,
``users_cli.py``) are imported by ``cli.py`` and so cannot import from it.
"""

from __future__ import annotations

import argparse
from typing import Any


def subparser(
    sub: Any, name: str, help_: str, description: str, epilog: str, **kw: Any
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its description and examples as written."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )
    return parser
