"""`python -m tdev_infra [--outdir DIR]`: synthesize the three stacks (what `cdktf synth` runs).

The cdktf CLI sets CDKTF_OUTDIR; run by hand, --outdir (default infra/cdktf.out) says where.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdev_infra", description=__doc__)
    parser.add_argument("--outdir", default=os.environ.get("CDKTF_OUTDIR") or "cdktf.out")
    args = parser.parse_args(argv)
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

    from tdev_infra import _cdktf as tf
    from tdev_infra.settings import from_environment
    from tdev_infra.stack import StateStack

    settings, backend = from_environment()
    app = tf.App(outdir=args.outdir)
    for env in settings:
        StateStack(app, env, backend)
    app.synth()
    print(f"synthesized {', '.join(s.stack_name for s in settings)} into {args.outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
