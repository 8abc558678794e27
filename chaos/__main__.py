"""`python -m chaos --trials 60 --seed 1 [--rows N] [--json FILE]`: run the fault campaign.

Exit code 0 only if there were no violations and no leftovers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chaos.campaign import run_campaign


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the source database (default 1,000,000: about 220 MiB)")
    parser.add_argument("--json", type=Path, help="also write the trials as JSON here")
    args = parser.parse_args()
    report = run_campaign(args.trials, args.seed, rows=args.rows, log=lambda line: print(line, flush=True))
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({
            "seed": report.seed, "seconds": report.seconds, "rows": report.rows,
            "database_bytes": report.database_bytes, "load_average": report.load_average,
            "calibration": report.calibration, "skipped": report.skipped,
            "violations": report.violations, "leftovers": report.leftovers,
            "trials": [t.__dict__ for t in report.trials]}, indent=2))
    return 0 if not report.violations and not report.leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
