"""The ``jaxpto`` command line.

``jaxpto verify``  checks every integrator against ASE step for step (float64)
and prints/writes the table; it runs offline on a CPU in a minute or two.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jaxpto", description="JAX-native molecular dynamics for ML force fields")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="compare every integrator with ASE's, step for step, in float64")
    v.add_argument("--steps", type=int, default=200, help="MD steps per case (default 200)")
    v.add_argument("--size", type=int, default=2, help="Cu fcc supercell repetitions (4*size^3 atoms)")
    v.add_argument("--no-native-ase-emt", action="store_true",
                   help="skip the second comparison against ASE's own EMT calculator")
    v.add_argument("--out", default="jaxpto-verify.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.command == "verify":
        if args.steps < 1 or args.size < 1:
            parser.error("--steps and --size must be >= 1")
        from jaxpto.verify import verify

        res = verify(steps=args.steps, size=args.size, native_ase_emt=not args.no_native_ase_emt, out=args.out)
        return 0 if res["passed"] else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
