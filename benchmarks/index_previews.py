"""What gallery previews cost `dsrhn index`: the same model and gallery indexed without previews (the named baseline)
and with them, alternately, in one run; wall time of each and the previews' bytes per image.

    python benchmarks/index_previews.py --model runs/tfx/serving/dsrhn/<version> --examples <the job's Examples>
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    args = ap.parse_args()

    from serving.indexer import gallery_from_examples, run_indexing

    items = gallery_from_examples(args.examples)
    work = tempfile.mkdtemp(prefix="dsrhn-previews-")
    model = os.path.join(work, "1")
    shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("index", "index.*"))
    times: dict = {False: [], True: []}
    size = None
    try:
        for _ in range(args.repeats):
            for previews in (False, True):
                t0 = time.perf_counter()
                s = run_indexing(model, items, beam_args=["--runner=DirectRunner"], previews=previews)
                times[previews].append(time.perf_counter() - t0)
                if previews:
                    size = s.manifest["previews"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base, with_p = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"dsrhn index of {len(items):,} gallery images, {platform.node()} {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, median of {args.repeats} runs each, alternating"
    )
    print("| index | seconds | x without |\n|---|---|---|")
    print(f"| without previews (baseline) | {base:.1f} | 1.00 |")
    print(f"| with previews | {with_p:.1f} | {with_p / base:.2f} |")
    print(
        f"previews: {size['bytes'] / size['count'] / 1024:.2f} KiB per image ({size['bytes'] / 2**20:.1f} MiB for "
        f"{size['count']:,}), longer side <= {size['max_side']} px, JPEG"
    )


if __name__ == "__main__":
    main()
