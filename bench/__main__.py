"""`make bench` / `python -m bench [--quick]`: every benchmark in one run, each printing its own table.

One after another, never in parallel: each measures ratios against its peer side by side, and two at once
on the same cores would measure each other.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = ("train_loop", "predict", "queue", "metrics_store", "e2e", "memory", "sweep", "cancel")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    only = [a for a in args if not a.startswith("-")]
    flags = [a for a in args if a.startswith("-")]
    failed = []
    for name in only or BENCHMARKS:
        print(f"\n## bench.{name}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n", flush=True)
        try:
            code = importlib.import_module(f"bench.{name}").main(flags)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
