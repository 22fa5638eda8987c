"""Regression gate for the pyperf suite: exit 1 when a benchmark got significantly slower.

    python perf/compare.py perf/baseline.json perf/results/new.json [--threshold 0.20]

`python -m pyperf compare_to` prints the same kind of table but exits 0 even on a
regression (ECOSYSTEM.md 11), so this script decides instead. A benchmark regresses when

* its mean is more than `threshold` (default 20 %) above the baseline's mean, and
* the difference is significant: Student's two-sample t-test at 95 % (pyperf's own
  `is_significant`, the test compare_to uses; a local copy is used if that private helper
  moves).

Benchmarks present in only one file are listed and ignored. Exit status: 0 = no regression,
1 = at least one regression, 2 = unusable input.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import pyperf


def _t_test(a: list[float], b: list[float]) -> tuple[bool, float]:
    """(significant at 95 %, t score): pooled-variance two-sample t-test, as pyperf's."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return False, 0.0
    va, vb = statistics.variance(a), statistics.variance(b)
    pooled = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    se = math.sqrt(pooled * (1 / na + 1 / nb))
    diff = statistics.fmean(a) - statistics.fmean(b)
    if se == 0:
        return diff != 0, math.inf if diff else 0.0
    t = diff / se
    # two-tailed critical values of Student's t at 95 %; 1.96 beyond the table
    table = {
        1: 12.71,
        2: 4.303,
        3: 3.182,
        4: 2.776,
        5: 2.571,
        6: 2.447,
        7: 2.365,
        8: 2.306,
        9: 2.262,
        10: 2.228,
        11: 2.201,
        12: 2.179,
        13: 2.160,
        14: 2.145,
        15: 2.131,
        16: 2.120,
        17: 2.110,
        18: 2.101,
        19: 2.093,
        20: 2.086,
        25: 2.060,
        30: 2.042,
        40: 2.021,
        60: 2.000,
        120: 1.980,
    }
    dof = na + nb - 2
    critical = next((v for k, v in sorted(table.items()) if dof <= k), 1.96)
    return abs(t) >= critical, t


def is_significant(a: list[float], b: list[float]) -> tuple[bool, float]:
    if len(a) < 2 or len(b) < 2:
        return False, 0.0
    try:
        from pyperf._utils import is_significant as pyperf_is_significant
    except ImportError:
        return _t_test(a, b)
    return pyperf_is_significant(a, b)


def compare(base_path: str, new_path: str, threshold: float = 0.20, out=sys.stdout) -> int:
    """Print one row per benchmark; return the exit status (0 ok, 1 regression)."""
    base = pyperf.BenchmarkSuite.load(base_path)
    new = pyperf.BenchmarkSuite.load(new_path)
    base_by_name = {b.get_name(): b for b in base.get_benchmarks()}
    new_by_name = {b.get_name(): b for b in new.get_benchmarks()}
    common = [name for name in base_by_name if name in new_by_name]
    if not common:
        print("no benchmark in common", file=out)
        return 2
    regressions = []
    print(f"{'benchmark':<28} {'base':>12} {'new':>12} {'change':>9}  verdict", file=out)
    for name in common:
        b, n = base_by_name[name], new_by_name[name]
        bm, nm = b.mean(), n.mean()
        change = nm / bm - 1.0 if bm else 0.0
        significant, _ = is_significant(list(b.get_values()), list(n.get_values()))
        if significant and change > threshold:
            verdict = "REGRESSION"
            regressions.append(name)
        elif significant and change < 0:
            verdict = "faster"
        elif significant:
            verdict = "slower (within threshold)"
        else:
            verdict = "same (not significant)"
        print(
            f"{name:<28} {b.format_value(bm):>12} {n.format_value(nm):>12} {change * 100:>+8.1f}%  {verdict}",
            file=out,
        )
    for name in sorted(set(base_by_name) ^ set(new_by_name)):
        print(f"{name:<28} only in {'the baseline' if name in base_by_name else 'the new results'}", file=out)
    if regressions:
        print(
            f"{len(regressions)} regression(s) over {threshold * 100:.0f} %: {', '.join(regressions)}",
            file=out,
        )
        return 1
    print(f"no significant slowdown over {threshold * 100:.0f} %", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="baseline suite (JSON written by pyperf)")
    parser.add_argument("new", help="new suite")
    parser.add_argument(
        "--threshold", type=float, default=0.20, help="allowed slowdown of the mean (0.20 = 20 %%)"
    )
    args = parser.parse_args(argv)
    try:
        return compare(args.base, args.new, args.threshold)
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
