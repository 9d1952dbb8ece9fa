"""Peak memory of ``segx evaluate`` against the number of studies: is it flat?

``--large`` (default 10,000) 2D phantom studies are generated once (``segx.demo.phantoms``);
``segx evaluate --model demo2d --methods gradcam --mc-samples 0 --no-evidence`` then runs
as a separate process on ``--small`` (default 1,000, ``--limit``: a stratified draw) and on
all of them, each into a fresh output folder. The peak resident set size of each process is
the kernel's ``ru_maxrss`` of that child (``os.wait4``). ``ratio = peak(large) /
peak(small)``; the goal is <= 1.2 (memory flat in the number of studies: rows go to
``rows.jsonl`` as they are computed, the summary reads them back).

    python benchmarks/evaluate_memory.py [--small 1000] [--large 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "monailabel_app"
sys.path.insert(0, str(APP))

from common import cpu_name  # noqa: E402
from segx.demo.phantoms import generate  # noqa: E402


def peak_rss_mb(data: Path, out: Path, limit: int | None) -> tuple[float, float, dict]:
    """(peak RSS in MB, seconds, EVAL summary) of one ``segx evaluate`` process."""
    command = [sys.executable, "-m", "segx.cli", "evaluate", "--model", "demo2d", "--data", str(data), "--out", str(out),
               "--methods", "gradcam", "--mc-samples", "0", "--no-evidence"] + (["--limit", str(limit)] if limit else [])  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=APP, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    printed = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"segx evaluate failed:\n{printed[-2000:]}")
    summary = json.loads(next(line for line in printed.splitlines() if line.startswith("EVAL "))[5:])
    return usage.ru_maxrss / 1024, seconds, summary  # ru_maxrss is in KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        generate(data, 2, args.large, seed=0, split="test")
        result = {"cpu": cpu_name(), "small": args.small, "large": args.large}
        for name, limit in (("small", args.small), ("large", None)):
            peak, seconds, summary = peak_rss_mb(data, Path(folder) / name, limit)
            result[f"peak_rss_mb_{name}"], result[f"seconds_{name}"] = round(peak, 1), round(seconds, 1)
            assert summary["n"] == (limit or args.large), summary["n"]
            print(f"{summary['n']} studies: peak RSS {peak:.0f} MB, {seconds:.0f} s")
    result["ratio"] = result["peak_rss_mb_large"] / result["peak_rss_mb_small"]
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
