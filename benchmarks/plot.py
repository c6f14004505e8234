"""Rows per second against month size, one line per way, from the end-to-end results.

    python -m benchmarks.plot [--results benchmarks/results] [--dataset yellow] [--out FILE.png]

Reads every `<results>/*.json` that `python -m benchmarks.end_to_end` wrote for the dataset; where
several runs measured a way at the same size, the latest counts. `main(argv)` returns the plotted
series, {way: [(rows, rows/s), ...]} by size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.end_to_end import RESULTS

PLOT_NAME = "rows_per_second.png"


def series(results: Path, dataset: str) -> dict[str, list[tuple[int, float]]]:
    """{way: [(rows, rows/s)]} by size, the latest result of each (the files are named by UTC time)."""
    latest: dict[str, dict[int, float]] = {}
    for path in sorted(results.glob("*.json")):
        figures = json.loads(path.read_text())
        if figures["dataset"] != dataset:
            continue
        for way, result in figures["ways"].items():
            latest.setdefault(way, {})[figures["rows"]] = result["rows_per_second"]
    return {way: sorted(points.items()) for way, points in latest.items()}


def main(argv=None) -> dict[str, list[tuple[int, float]]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--dataset", default="yellow")
    parser.add_argument("--out", type=Path, help=f"the PNG (default: <results>/{PLOT_NAME})")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = series(args.results, args.dataset)
    figure, axes = plt.subplots(figsize=(8, 5))
    for way, points in lines.items():
        rows, speed = zip(*points, strict=True)
        axes.plot(rows, speed, marker="o", label=way)
    axes.set_xscale("log")
    axes.set_xlabel(f"rows in the month (synthetic {args.dataset})")
    axes.set_ylabel("rows/s (wall, process start included)")
    axes.set_title("python -m benchmarks.end_to_end: every way")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    out = args.out or args.results / PLOT_NAME
    figure.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(figure)
    print(f"plot written to {out}")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
