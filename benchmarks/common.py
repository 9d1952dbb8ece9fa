"""Pieces shared by the benchmarks: the machine's name and the timing options."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else the architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def add_timing_arguments(parser: argparse.ArgumentParser, threads_help: str, quick_help: str) -> None:
    """``--threads``, ``--repeats``, ``--quick`` and ``--seed``."""
    parser.add_argument("--threads", type=int, default=2, help=threads_help)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7, 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and images")


def checked_repeats(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The number of rounds: at least 5 (medians of >= 5) unless ``--quick``."""
    repeats = args.repeats or (3 if args.quick else 7)
    if repeats < (1 if args.quick else 5):
        parser.error("--repeats must be >= 5 (>= 1 with --quick)")
    return repeats
