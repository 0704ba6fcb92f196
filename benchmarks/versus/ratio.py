"""Formats compare.sh's rounds: `ratio.py OLD_JSON NEW_JSON` prints one round; `ratio.py --summary R...`
prints the median of the rounds' ratios."""

from __future__ import annotations

import json
import statistics
import sys


def main(args: list[str]) -> None:
    if args[0] == "--summary":
        ratios = [float(r) for r in args[1:]]
        print(
            f"median ratio new/old {statistics.median(ratios):.3f} over {len(ratios)} rounds "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
        )
        return
    old, new = json.loads(args[0]), json.loads(args[1])
    ratio = new["run_s_median"] / old["run_s_median"]
    print(
        f"{old['run_s_median']:.3f} {new['run_s_median']:.3f} {ratio:.3f} "
        f"{old['cpu_s_median'] * 1000:.1f} {new['cpu_s_median'] * 1000:.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
