"""``python -m pacarray.benchmarks``: see the package docstring."""

from __future__ import annotations

import argparse
import json
import sys

from . import WORKLOAD_MODULES
from ._harness import Options, run_all, run_child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pacarray.benchmarks",
        description="Time pacarray's workloads against PyTorch peers (float32, 2 threads), "
                    "with peak memory and the cold-start cost.",
    )
    parser.add_argument("--only", nargs="+", default=(), metavar="NAME",
                        help="run only these workloads (names as printed; 'cold' for the "
                             "cold-start table)")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="timed runs per implementation (default 9, --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help="untimed runs first (default 2, --quick 1)")
    parser.add_argument("--gpu", action="store_true",
                        help="run the GPU variants (CuPy arrays) instead of the CPU ones")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that everything runs, in seconds")
    parser.add_argument("--no-cold", dest="cold", action="store_false",
                        help="skip the cold-start measurements")
    parser.add_argument("--no-peers", dest="peers", action="store_false",
                        help="time pacarray alone, without the PyTorch peers")
    parser.add_argument("--json", dest="json_path", metavar="PATH",
                        help="also write all results to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child is not None:
        return run_child(json.loads(arguments.child))
    if arguments.repeat is not None and arguments.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {arguments.repeat}")
    if arguments.warmup is not None and arguments.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {arguments.warmup}")
    options = Options(modules=WORKLOAD_MODULES, only=arguments.only, repeat=arguments.repeat,
                      warmup=arguments.warmup, quick=arguments.quick, gpu=arguments.gpu,
                      cold=arguments.cold, peers=arguments.peers, json_path=arguments.json_path)
    return run_all(options)


if __name__ == "__main__":
    sys.exit(main())
