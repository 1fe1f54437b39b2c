"""Command line: ``python -m pacarray demo [--output PATH] [--noise SIGMA]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pacarray",
        description="pacarray: pixel-adaptive convolution on NumPy and CuPy arrays.",
        epilog="Benchmarks: python -m pacarray.benchmarks --help",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo", help="denoise the bundled sample photograph with a bilateral filter",
        description="Add seeded Gaussian noise to the bundled sample photograph, remove it with "
                    "an edge-preserving bilateral filter (fused pac_pool) and write a "
                    "side-by-side PNG, noisy | filtered.",
    )
    # Imported only for the demo so that `python -m pacarray` alone stays instant.
    from . import demo

    demo.add_arguments(demo_parser)
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 0
    return demo.main(arguments)


if __name__ == "__main__":
    sys.exit(main())
