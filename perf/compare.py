"""Regression gate for the pyperf suite: exit 1 when a benchmark got significantly slower.

    python perf/compare.py perf/baseline.json NEW.json [--threshold T] [--raw]

CI (scripts/test.sh) runs `python perf/bench_core.py --quick -q --append NEW.json`, then this
script, and on exit 1 one more quick run appended to NEW.json and this script again (a real
regression persists; a burst of load rarely hits the same benchmark twice). The baseline is
recorded with (perf/README.md):

    rm -f perf/baseline.json
    for i in 1 2 3; do python perf/bench_core.py --quick -q --append perf/baseline.json; done

`python -m pyperf compare_to` prints the same kind of table but exits 0 even on a regression
(ECOSYSTEM.md 11), so this script decides instead.

Normalised mode (both files hold the `calibration_*` benchmarks of bench_core.py; the default):
the machine that runs the suite, and the load on it, change from run to run by far more than the
regressions to catch (two `--fast` wall-clock runs of the same code on the shared CI box: -44 % ..
+36 %). So every run also times fixed stdlib workloads, and each benchmark is compared as a
multiple of them:

    est(bench)      = min of its values (cpu clock: load only ever adds CPU time, so the
                      minimum is the least disturbed value); median for the wall clock
    scale(run)      = geometric mean of est() of the calibration benchmarks found in both files
    norm(bench,run) = est(bench) / scale(run)
    change          = norm(bench,new) / norm(bench,base) - 1

A benchmark regresses when change > threshold (default NORM_THRESHOLD = 0.60) and Student's
t-test at 95 % on the normalised values says the difference is significant. The threshold comes
from the spread measured on the shared 2-vCPU box (perf/README.md, "Noise and threshold"): 21 runs
of the CI step as committed (idle, beside 1-2 busy loops or a disk writer) gave -17 % .. +44 %
(18 of them within -6 % .. +19 %); single-pass runs saw slow phases of one benchmark up to +71 %,
which the two passes of --quick, the minimum and CI's confirmation run absorb. Injected
regressions: per-message Python work +127 %, a read done twice +91 %, both flagged; an extra
1 MB copy per append +43..50 %, not flagged. So 2x and more is caught, below ~1.6x is not.

Raw mode (`--raw`, or a file without calibration benchmarks): each benchmark's mean against the
baseline's mean, regression when more than `threshold` (default 20 %) slower and significant;
only meaningful for two runs on the same quiet machine close together.

Significance: pyperf's own `is_significant` (the test compare_to uses; the local copy below when
that private helper moves or the two files hold different numbers of values). Benchmarks present
in only one file are listed and ignored. Exit status: 0 = no regression, 1 = at least one
regression, 2 = unusable input (or suites timed with different clocks).
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
    """pyperf's t-test; the local one when the samples differ in size (pyperf's refuses them: the
    baseline merges 3 quick runs, a CI run has 1 or 2)."""
    if len(a) < 2 or len(b) < 2:
        return False, 0.0
    if len(a) != len(b):
        return _t_test(a, b)
    try:
        from pyperf._utils import is_significant as pyperf_is_significant
    except ImportError:
        return _t_test(a, b)
    return pyperf_is_significant(a, b)


CALIBRATION_PREFIX = "calibration_"
NORM_THRESHOLD = 0.60  # normalised mode; see the module docstring and perf/README.md
RAW_THRESHOLD = 0.20  # raw mode
REBASELINE = (
    "rm -f perf/baseline.json; "
    "for i in 1 2 3; do python perf/bench_core.py --quick -q --append perf/baseline.json; done"
)


def estimator(clock: str | None):
    """The statistic compared in normalised mode: min for CPU time, median otherwise."""
    return min if clock == "cpu" else statistics.median


def calibration_scale(by_name: dict, names, est=statistics.median) -> float:
    """Geometric mean of est() of the calibration benchmarks `names` of one suite."""
    return math.exp(statistics.fmean(math.log(est(by_name[n].get_values())) for n in names))


def _clock(suite) -> str | None:
    return suite.get_metadata().get("iggy_clock")


def compare(base_path: str, new_path: str, threshold: float | None = None, out=sys.stdout, raw: bool = False) -> int:
    """Print one row per benchmark; return the exit status (0 ok, 1 regression, 2 unusable)."""
    base = pyperf.BenchmarkSuite.load(base_path)
    new = pyperf.BenchmarkSuite.load(new_path)
    if _clock(base) != _clock(new):
        print(
            f"the suites were timed with different clocks (baseline {_clock(base)}, new {_clock(new)}):"
            " rerun with the baseline's --clock",
            file=out,
        )
        return 2
    est = estimator(_clock(base))
    base_by_name = {b.get_name(): b for b in base.get_benchmarks()}
    new_by_name = {b.get_name(): b for b in new.get_benchmarks()}
    calibration = [n for n in base_by_name if n.startswith(CALIBRATION_PREFIX) and n in new_by_name]
    normalised = bool(calibration) and not raw
    if threshold is None:
        threshold = NORM_THRESHOLD if normalised else RAW_THRESHOLD
    common = [n for n in base_by_name if n in new_by_name and not n.startswith(CALIBRATION_PREFIX)]
    if not common:
        print("no benchmark in common", file=out)
        return 2
    if normalised:
        base_scale = calibration_scale(base_by_name, calibration, est)
        new_scale = calibration_scale(new_by_name, calibration, est)
        print(
            f"calibration ({est.__name__} of each, clock {_clock(base)}): this run took"
            f" {new_scale / base_scale:.2f}x the baseline's time; benchmarks compared as multiples of it",
            file=out,
        )
        for name in calibration:
            cb, cn = base_by_name[name], new_by_name[name]
            bm, nm = est(cb.get_values()), est(cn.get_values())
            print(f"  {name:<26} {cb.format_value(bm):>12} {cn.format_value(nm):>12}", file=out)
        header = f"{'benchmark':<28} {'base':>12} {'new':>12} {'norm base':>10} {'norm new':>10} {'change':>9}  verdict"
    else:
        base_scale = new_scale = 1.0
        print("raw times (no calibration in both files): meaningful only on the same quiet machine", file=out)
        header = f"{'benchmark':<28} {'base':>12} {'new':>12} {'change':>9}  verdict"
    print(header, file=out)
    regressions = []
    for name in common:
        b, n = base_by_name[name], new_by_name[name]
        if normalised:
            bv = [v / base_scale for v in b.get_values()]
            nv = [v / new_scale for v in n.get_values()]
            bm, nm = est(b.get_values()), est(n.get_values())
            bn, nn = bm / base_scale, nm / new_scale
        else:
            bv, nv = list(b.get_values()), list(n.get_values())
            bm, nm = b.mean(), n.mean()
            bn, nn = bm, nm
        change = nn / bn - 1.0 if bn else 0.0
        significant, _ = is_significant(bv, nv)
        if significant and change > threshold:
            verdict = "REGRESSION"
            regressions.append((name, change))
        elif significant and change < 0:
            verdict = "faster"
        elif significant:
            verdict = "slower (within threshold)"
        else:
            verdict = "same (not significant)"
        cells = f"{name:<28} {b.format_value(bm):>12} {n.format_value(nm):>12}"
        if normalised:
            cells += f" {bn:>10.4f} {nn:>10.4f}"
        print(f"{cells} {change * 100:>+8.1f}%  {verdict}", file=out)
    for name in sorted(set(base_by_name) ^ set(new_by_name)):
        print(f"{name:<28} only in {'the baseline' if name in base_by_name else 'the new results'}", file=out)
    kind = "relative to the calibration" if normalised else "raw"
    if regressions:
        listed = ", ".join(f"{name} {change * 100:+.0f} %" for name, change in regressions)
        print(
            f"PERF REGRESSION: {len(regressions)} benchmark(s) more than {threshold * 100:.0f} % slower"
            f" ({kind}) than perf/baseline.json: {listed}\n"
            "  What each one runs: the docstring of perf/bench_core.py. Look for new per-message Python\n"
            "  work or a lost fast path in the code it calls; `python -m pyperf stats NEW.json` shows the\n"
            "  spread of the values.\n"
            "  If the slowdown is intended (e.g. a correctness fix that costs time), re-record the baseline\n"
            "  on the CI machine and commit perf/baseline.json with the change:\n"
            f"    {REBASELINE}",
            file=out,
        )
        return 1
    print(f"no significant slowdown over {threshold * 100:.0f} % ({kind})", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="baseline suite (JSON written by pyperf)")
    parser.add_argument("new", help="new suite")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"allowed slowdown (0.20 = 20 %%); default {NORM_THRESHOLD} normalised, {RAW_THRESHOLD} raw",
    )
    parser.add_argument("--raw", action="store_true", help="ignore the calibration, compare raw means")
    args = parser.parse_args(argv)
    try:
        return compare(args.base, args.new, args.threshold, raw=args.raw)
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
