#!/usr/bin/env python
"""Equal-quality summary of a bench.json, written next to it as equal_quality.json.

    python benchmarks/summarize_bench.py benchmarks/results/digits_bench/bench.json

Runs :func:`ecar.bench.report.summarize` (Pareto frontiers, equal-quality cost
ratios with bounds, verdicts at equal cost) on the rows of a bench.json. Rows written
before FID was averaged over seeds carry only ``fid``: it is used as the mean with an
unknown (zero) spread, and the output says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecar.bench.report import summarize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench_json", type=Path)
    args = p.parse_args()
    doc = json.loads(args.bench_json.read_text())
    rows, legacy = [], False
    for r in doc["rows"]:
        if r.get("fid_mean") is None:
            legacy = True
            r = dict(r, fid_mean=r.get("fid"), fid_std=0.0)
        rows.append(r)
    out = {
        "source": str(args.bench_json),
        "command": f"python benchmarks/summarize_bench.py {args.bench_json}",
        "note": ("legacy rows: one sampling seed, FID spread unknown (taken as 0)" if legacy else
                 "FID mean and std over the bench's sampling seeds"),
        "methods": summarize(rows),
    }
    path = args.bench_json.with_name("equal_quality.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
