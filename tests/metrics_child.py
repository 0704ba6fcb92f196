"""A pipeline-like child process for the metrics fault tests (run with `python -m tests.metrics_child`).

--mode stream: records forever until SIGTERM; install_signal_handlers flushes, then the previous handler
               writes how many records the collector took in to --out and exits 0.
--mode fixed:  records --count records, closes, writes the count to --out.
--mode kill:   records about 20,000 a second with a 1 s flush interval, writing how many it has taken in
               to --out after every 1,000 (so a SIGKILL leaves a count at most 1,000 behind).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from tdev_metrics import CollectorConfig, MetricsCollector, install_signal_handlers
from tdev_state import StateClient

NOON = 1795696200.0  # 2026-11-26 12:30 UTC: all child records land in the same hour


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("stream", "fixed", "kill"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--metric", default="child_metric")
    args = parser.parse_args()
    if args.mode == "kill":
        collector = MetricsCollector(StateClient(), CollectorConfig(flush_interval=1.0))
        Path(str(args.out) + ".ready").write_text("1")
        i = 0
        while True:
            collector.record(args.metric, 1.0, agent_name="parser", timestamp=NOON)
            i += 1
            if i % 1000 == 0:
                tmp = Path(str(args.out) + ".tmp")
                tmp.write_text(str(i))
                tmp.replace(args.out)
                time.sleep(0.05)
    collector = MetricsCollector(StateClient())

    if args.mode == "fixed":
        for i in range(args.count):
            collector.record(args.metric, 1.0, agent_name="generation", timestamp=NOON, error=i % 7 == 0)
        collector.close()
        args.out.write_text(str(collector.records))
        return 0

    def report(num: int, frame: FrameType | None) -> None:
        args.out.write_text(str(collector.records))
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    install_signal_handlers(collector, (signal.SIGTERM,))
    Path(str(args.out) + ".ready").write_text("1")
    i = 0
    while True:
        collector.record(args.metric, float(i % 100), agent_name="parser", timestamp=NOON)
        i += 1
        if i % 5000 == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    sys.exit(main())
