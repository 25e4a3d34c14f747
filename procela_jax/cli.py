"""The ``procela-jax`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="procela-jax", description="procela_jax command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the built-in SIR demo and write its plot")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=365)
    demo.add_argument("--out", default="sir_demo.png")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.steps < 1:
            print("procela-jax: --steps must be a positive integer", file=sys.stderr)
            return 2
        from .demos import sir

        sir.main(out=args.out, seed=args.seed, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
