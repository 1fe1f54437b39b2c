"""``pacarray`` / ``python -m pacarray``: the command line, implemented in :mod:`pacarray.cli`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``pacarray`` command line and return its exit status (see :mod:`pacarray.cli`)."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
