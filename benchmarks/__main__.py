"""``python -m benchmarks [--quick] [--json PATH] [--only NAME ...] [--runs N]``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Context, Result, span
from .scenarios import SCENARIOS


def print_result(name: str, result: Result) -> None:
    print(f"\n== {name}  (headline: {result.headline}, "
          f"{'higher' if result.higher_is_better else 'lower'} is better)")
    metrics = list(dict.fromkeys([*result.dcm, *result.peer, *result.ceiling]))
    print(f"  {'metric':<28} {'dcm-sync':>26} {'python-socketio':>26} {'ceiling':>26}")
    for m in metrics:
        print(f"  {m:<28} {span(result.dcm.get(m)):>26} {span(result.peer.get(m)):>26} "
              f"{span(result.ceiling.get(m)):>26}")
    r = result.ratio()
    print(f"  ratio (dcm vs peer on {result.headline}): {'-' if r is None else f'{r:.2f}x'}")
    for key, value in result.extra_ratios.items():
        print(f"  {key}: {'-' if value is None else f'{value:.2f}x'}")
    for note in result.notes:
        print(f"  note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a run under 3 minutes")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these")
    parser.add_argument("--runs", type=int, default=3, help="repeats per figure (>= 3)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (medians of several runs)")
    names = args.only or list(SCENARIOS)
    print(f"dcm-sync benchmarks: {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} cores, {'quick' if args.quick else 'full'} run, {args.runs} runs each")
    out: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                       "platform": platform.platform()},
                           "quick": args.quick, "runs": args.runs, "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="dcm-bench-") as tmp:
        for name in names:
            started = time.monotonic()
            ctx = Context(quick=args.quick, runs=args.runs, workdir=Path(tmp) / name)
            ctx.workdir.mkdir()
            result = SCENARIOS[name](ctx)
            print_result(name, result)
            print(f"  ({time.monotonic() - started:.0f} s)")
            out["scenarios"][name] = result.as_json()
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
