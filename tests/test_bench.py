"""iggy-bench and perf/: the client codec helpers, the CLI, a smoke run of every scenario
against a real server (tiny sizes, JSON report fields), and the pyperf regression gate on
synthetic suites (the real suite is too slow and noisy for the test run)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
import subprocess
import sys

import pytest

from iggy.bench.cli import build_parser, config_from_args, parse_duration, parse_size
from iggy.bench.fastclient import PollFrame, SendFrame, scan_poll
from iggy.bench.metrics import ActorMetrics, group_summary, latency_stats, percentile
from iggy.protocol.batch import build_batch, compute_batch_checksum, iter_messages, random_id, validate_batch
from perf.resp import RespError, resp_skip, resp_xread
from tests.conftest import REPO, ROOT_PASSWORD, ROOT_USER, ServerProcess

PERCENTILE_KEYS = ("p50", "p90", "p95", "p99", "p999", "p9999")


def _load_perf(name: str):
    spec = importlib.util.spec_from_file_location(f"perf_{name}", REPO / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- client codec


def test_send_frame_restamps_a_valid_batch():
    batch = build_batch([(random_id(), bytes([i]) * 50, b"") for i in range(7)], origin_timestamp=5)
    frame = SendFrame(batch, 42, 0xABC, 3, 4, 0)
    assert frame.size == 256 + 26 + len(batch) and frame.message_count == 7
    data = frame.stamp(9, 123_456_789, 2)
    header = bytes(data[:256])
    assert struct.unpack_from("<I", header, 48)[0] == len(data)
    assert header[60] == 5 and header[176] == 160
    assert struct.unpack_from("<Q", header, 168)[0] == 9  # request
    assert struct.unpack_from("<Q", header, 184)[0] == 42  # session
    assert int.from_bytes(header[128:144], "little") == 0xABC  # client
    meta_len = struct.unpack_from("<I", data, 256)[0]
    assert meta_len == 22
    stream, topic = data[260:266], data[266:272]
    assert bytes(stream) == b"\x01\x04" + struct.pack("<I", 3) and bytes(topic) == b"\x01\x04" + struct.pack("<I", 4)
    assert bytes(data[272:278]) == b"\x02\x04" + struct.pack("<I", 2)
    assert struct.unpack_from("<I", data, 278)[0] == 7
    body = bytes(data[282:])
    assert validate_batch(body, 0, len(body), 7)[0] == 7  # every checksum still right
    assert struct.unpack_from("<Q", body, 24)[0] == 123_456_789
    assert compute_batch_checksum(body) == struct.unpack_from("<Q", body, 40)[0]
    # only the stamped fields changed
    assert [m["payload"] for m in iter_messages(body)] == [bytes([i]) * 50 for i in range(7)]


def test_poll_frame_layout():
    frame = PollFrame(7, 1, 2, 5, 1, 2, 3, 5, 100, auto_commit=True)
    data = bytes(frame.stamp(11, 4, 99))
    assert len(data) == 256 + 38 and struct.unpack_from("<I", data, 48)[0] == 294
    assert data[176] == 2 and struct.unpack_from("<I", data, 196)[0] == 100  # op read, POLL_MESSAGES
    assert struct.unpack_from("<Q", data, 168)[0] == 11
    body = data[256:]
    assert body[0] == 2 and body[1:7] == b"\x01\x04" + struct.pack("<I", 5)
    assert body[19] == 1 and struct.unpack_from("<I", body, 20)[0] == 4
    assert body[24] == 5 and struct.unpack_from("<Q", body, 25)[0] == 99
    assert struct.unpack_from("<I", body, 33)[0] == 100 and body[37] == 1


def test_scan_poll_counts_payload_and_next_offset():
    batch = bytearray(
        build_batch(
            [(1, b"x" * 10, b""), (2, b"y" * 30, b"\x02\x01\x00\x00\x00k\x02\x01\x00\x00\x00v")],
            origin_timestamp=777,
        )
    )
    struct.pack_into("<Q", batch, 8, 40)  # base offset as the server stamps it
    body = struct.pack("<IQI", 1, 41, 4) + bytes(batch) * 2
    assert scan_poll(body) == (1, 41, 4, 80, 777, 42)
    assert scan_poll(struct.pack("<IQI", 0, 0, 0)) == (0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        scan_poll(body[:-1])


def test_resp_scanners_need_the_whole_reply():
    xread = (
        b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n"
        b"*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nd\r\n$5\r\nhello\r\n"
        b"*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nd\r\n$3\r\nabc\r\n"
    )
    for cut in range(len(xread)):
        assert resp_xread(xread, cut) is None
    assert resp_xread(xread, len(xread)) == (len(xread), 2, b"1-1", 8)
    assert resp_xread(b"*-1\r\n", 5) == (5, 0, None, 0)
    acks = b"$3\r\n1-0\r\n+OK\r\n:12\r\n"
    assert resp_skip(acks, len(acks), 3) == len(acks)
    assert all(resp_skip(acks, cut, 3) == -1 for cut in range(len(acks)))
    with pytest.raises(RespError, match="WRONGTYPE"):
        resp_skip(b"-WRONGTYPE oops\r\n", 17, 1)
    with pytest.raises(RespError):
        resp_xread(b"-ERR x\r\n", 8)


# --------------------------------------------------------------------------- CLI and metrics


def test_sizes_and_durations():
    assert parse_size("1GB") == 10**9 and parse_size("1GiB") == 2**30 and parse_size("4096") == 4096
    assert parse_size("1.5MB") == 1_500_000
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration("3") == 3


def test_cli_maps_upstream_options():
    args = build_parser().parse_args(
        [
            "-m",
            "100",
            "-P",
            "10",
            "-T",
            "1MB",
            "--fsync",
            "pinned-producer",
            "-p",
            "3",
            "tcp",
            "--server-address",
            "10.0.0.1:1",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.kind, cfg.producers, cfg.streams, cfg.message_size, cfg.messages_per_batch) == (
        "pinned_producer",
        3,
        3,
        100,
        10,
    )
    assert cfg.total_data == 10**6 and cfg.durability == "persisted" and cfg.server_address == "10.0.0.1:1"
    assert cfg.batches_for(3) == [334, 333, 333]
    cfg = config_from_args(build_parser().parse_args(["bcg", "-c", "4", "-a", "6"]))
    assert (cfg.kind, cfg.consumers, cfg.partitions, cfg.streams, cfg.consumer_groups) == (
        "balanced_consumer_group",
        4,
        6,
        1,
        1,
    )


def test_cli_refuses_inconsistent_pinned_streams():
    proc = subprocess.run(
        [sys.executable, "-m", "iggy.bench", "pinned-producer", "-p", "2", "-s", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "must equal producers" in proc.stderr


def test_percentiles_and_group_totals():
    assert percentile([], 50) == 0.0
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = latency_stats(values)
    assert stats["p50_latency_ms"] == pytest.approx(50) and stats["p99_latency_ms"] == pytest.approx(99)
    assert stats["p9999_latency_ms"] == pytest.approx(100) and stats["min_latency_ms"] == pytest.approx(1)
    a = ActorMetrics("producer", 1, start=0.0, end=2.0)
    b = ActorMetrics("producer", 2, start=1.0, end=4.0)
    for m in (a, b):
        m.record(0.001, 1000, 1_000_000, 1_100_000)
    g = group_summary("producers", [a, b])
    assert g["total_time_secs"] == 4.0 and g["total_throughput_megabytes_per_second"] == 0.5
    assert g["total_messages"] == 2000 and g["actors"] == 2


# --------------------------------------------------------------------------- against a server


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("bench") / "data").start()
    yield srv
    srv.stop()


def _run_bench(address: str, out, *kind_args: str, global_args=()) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "iggy.bench",
        "-q",
        "--json",
        str(out),
        "-m",
        "100",
        "-P",
        "10",
        "-b",
        "6",
        *global_args,
        *kind_args,
        "tcp",
        "--server-address",
        address,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(out.read_text())


def _stream_exists(address: str, name: str) -> bool:
    from iggy.bench.client import connect

    async def check():
        conn = await connect(address, ROOT_USER, ROOT_PASSWORD)
        try:
            return await conn.get_stream(name) is not None
        finally:
            conn.close()

    return asyncio.run(check())


@pytest.mark.parametrize(
    "kind_args, groups, actors, messages",
    [
        (("pinned-producer", "-p", "2"), {"producers"}, 2, 120),
        (("pinned-consumer", "-c", "2"), {"consumers"}, 2, 120),
        (
            ("pinned-producer-and-consumer", "-p", "1", "-c", "1"),
            {"producers", "consumers", "producers_and_consumers"},
            2,
            60,
        ),
        (("balanced-producer", "-p", "2", "-a", "3"), {"producers"}, 2, 120),
        (("balanced-consumer-group", "-c", "2", "-a", "3"), {"consumers"}, 2, 120),
        (("end-to-end-producing-consumer", "-p", "2", "-s", "1"), {"producing_consumers"}, 2, 120),
    ],
)
def test_every_scenario_reports_and_cleans_up(bench_server, tmp_path, kind_args, groups, actors, messages):
    """6 batches of 10 x 100-byte messages per actor (bcg: 6 per consumer, shared)."""
    report = _run_bench(bench_server.tcp_address, tmp_path / "report.json", *kind_args)
    params = report["params"]
    assert params["message_size"] == 100 and params["messages_per_batch"] == 10 and params["message_batches"] == 6
    assert params["transport"] == "tcp" and "password" not in params
    individual = report["individual_metrics"]
    assert len(individual) == actors
    for actor in individual:
        for key in (
            "actor_kind",
            "actor_id",
            "total_messages",
            "total_user_data_bytes",
            "total_time_secs",
            "throughput_megabytes_per_second",
            "throughput_messages_per_second",
            "avg_latency_ms",
        ):
            assert key in actor
        for p in PERCENTILE_KEYS:
            assert actor[f"{p}_latency_ms"] >= 0
        assert actor["p50_latency_ms"] <= actor["p99_latency_ms"] <= actor["p9999_latency_ms"]
        assert actor["total_user_data_bytes"] == actor["total_messages"] * 100
    kinds = {g["kind"]: g for g in report["group_metrics"]}
    assert set(kinds) == groups
    main_group = next(g for k, g in kinds.items() if k != "producers_and_consumers")
    assert main_group["total_messages"] == messages
    assert main_group["total_throughput_megabytes_per_second"] > 0
    for p in PERCENTILE_KEYS:
        assert f"{p}_latency_ms" in main_group and f"average_{p}_latency_ms" in main_group
    for i in (1, 2):
        assert not _stream_exists(bench_server.tcp_address, f"bench-stream-{i}")


def test_keep_then_pinned_consumer_reuses_the_data(bench_server, tmp_path):
    address = bench_server.tcp_address
    _run_bench(address, tmp_path / "p.json", "pinned-producer", "-p", "1", global_args=["--keep"])
    assert _stream_exists(address, "bench-stream-1")
    report = _run_bench(address, tmp_path / "c.json", "pinned-consumer", "-c", "1")
    assert report["group_metrics"][0]["total_messages"] == 60
    # the consumer did not create the stream, so it leaves it
    assert _stream_exists(address, "bench-stream-1")
    _run_bench(address, tmp_path / "p2.json", "pinned-producer", "-p", "1")  # recreates, then deletes
    assert not _stream_exists(address, "bench-stream-1")


def test_persisted_topic_and_rate_limit(bench_server, tmp_path):
    # 6 batches x 1000 B at 20 kB/s: at least ~0.25 s of pacing
    report = _run_bench(
        bench_server.tcp_address,
        tmp_path / "r.json",
        "pinned-producer",
        "-p",
        "1",
        global_args=["--durability", "persisted", "--rate-limit", "20KB"],
    )
    assert report["params"]["durability"] == "persisted"
    assert report["individual_metrics"][0]["total_time_secs"] >= 0.2


# --------------------------------------------------------------------------- pyperf gate


def _suite(path, means: dict[str, float], spread: float = 0.01, clock: str | None = None, bursts=(), runs=4):
    """A pyperf suite file: `runs` runs x 5 values per benchmark around `means`, +-spread. Benchmarks in
    `bursts` get 3 of their 5 values per run 3x slower (another process stealing the core)."""
    import pyperf

    benchmarks = []
    for name, mean in means.items():
        run_list = []
        for r in range(runs):
            values = [mean * (1 + spread * ((r * 5 + i) % 7 - 3) / 3) for i in range(5)]
            if name in bursts:
                values = [v * 3 if i in (0, 2, 4) else v for i, v in enumerate(values)]
            metadata = {"name": name, "loops": 1, "unit": "second"}
            if clock:
                metadata["iggy_clock"] = clock
            run_list.append(pyperf.Run(values, metadata=metadata, collect_metadata=False))
        benchmarks.append(pyperf.Benchmark(run_list))
    pyperf.BenchmarkSuite(benchmarks).dump(str(path))
    return str(path)


def test_compare_gate_fails_on_regression_and_passes_on_equal(tmp_path, capsys):
    pytest.importorskip("pyperf")
    compare = _load_perf("compare")
    base = _suite(tmp_path / "base.json", {"batch_validate": 66e-6, "poll_read": 240e-6})
    same = _suite(tmp_path / "same.json", {"batch_validate": 66e-6, "poll_read": 240e-6})
    slow = _suite(tmp_path / "slow.json", {"batch_validate": 66e-6 * 1.5, "poll_read": 240e-6})
    mild = _suite(tmp_path / "mild.json", {"batch_validate": 66e-6 * 1.1, "poll_read": 240e-6 * 0.8})
    assert compare.main([base, same]) == 0
    assert compare.main([base, slow]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "batch_validate" in out
    assert compare.main([base, mild]) == 0  # 10 % slower is inside the 20 % threshold
    assert compare.main([base, mild, "--threshold", "0.05"]) == 1


def test_compare_gate_needs_significance(tmp_path):
    pytest.importorskip("pyperf")
    compare = _load_perf("compare")
    sig, _ = compare.is_significant([1.0, 1.01, 0.99, 1.0], [1.5, 1.51, 1.49, 1.5])
    assert sig
    not_sig, _ = compare.is_significant([1.0, 2.0, 0.5, 1.5], [1.1, 0.6, 2.1, 1.4])
    assert not not_sig
    # a 30 % slower mean hidden in 60 % noise is not a regression
    base = _suite(tmp_path / "base.json", {"x": 100e-6}, spread=0.6)
    noisy = _suite(tmp_path / "noisy.json", {"x": 100e-6}, spread=0.6)
    assert compare.main([base, noisy]) == 0


def test_compare_local_t_test_matches_pyperf():
    pytest.importorskip("pyperf")
    from pyperf._utils import is_significant

    compare = _load_perf("compare")
    for a, b in (
        ([1.0, 1.01, 0.99, 1.0], [1.5, 1.51, 1.49, 1.5]),
        ([1.0, 2.0, 0.5, 1.5], [1.1, 0.6, 2.1, 1.4]),
        ([5.0, 5.1, 5.2, 4.9, 5.0, 5.05], [5.3, 5.4, 5.2, 5.5, 5.35, 5.3]),
    ):
        assert compare._t_test(a, b)[0] == is_significant(a, b)[0]
    # unequal sizes (a 3-run baseline against a 1-run CI result): pyperf refuses them, the gate not
    with pytest.raises(ValueError):
        is_significant([1.0, 1.01, 0.99, 1.0, 1.0, 1.02], [1.5, 1.51, 1.49])
    assert compare.is_significant([1.0, 1.01, 0.99, 1.0, 1.0, 1.02], [1.5, 1.51, 1.49])[0]
    assert not compare.is_significant([1.0, 2.0, 0.5, 1.5, 1.2, 0.8], [1.1, 0.6, 2.1])[0]


# the calibration of a run: fixed stdlib workloads (bench_core.py), the machine's speed
CAL = {"calibration_hash_copy": 400e-6, "calibration_py_loop": 500e-6, "calibration_file_io": 90e-6}
CORE = {"batch_validate": 55e-6, "poll_read": 140e-6, "frame_parse_small": 85e-6}


def _scaled(factor: float, **relative: float) -> dict[str, float]:
    """Every time of a run on a machine `factor` times slower, with some benchmarks also
    `relative` times slower than the calibration (our code got slower)."""
    return {name: t * factor * relative.get(name, 1.0) for name, t in {**CAL, **CORE}.items()}


def test_normalised_gate_passes_on_a_slower_machine(tmp_path, capsys):
    compare = _load_perf("compare")
    base = _suite(tmp_path / "base.json", _scaled(1.0), clock="cpu")
    slower_box = _suite(tmp_path / "slow_box.json", _scaled(2.0), clock="cpu")
    faster_box = _suite(tmp_path / "fast_box.json", _scaled(0.5), clock="cpu")
    assert compare.main([base, slower_box]) == 0
    out = capsys.readouterr().out
    assert "took 2.00x the baseline's time" in out and "REGRESSION" not in out
    # the three calibration rows are shown, not judged
    assert "calibration_py_loop" in out and out.count("same (not significant)") == len(CORE)
    assert compare.main([base, faster_box]) == 0
    assert "took 0.50x the baseline's time" in capsys.readouterr().out
    # the same files compared raw: every benchmark "regressed" by 100 %, which the calibration explains
    assert compare.main([base, slower_box, "--raw"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("raw times") and "(raw) than perf/baseline.json" in out
    assert sum(line.endswith("REGRESSION") for line in out.splitlines()) == len(CORE)  # not the calibration


def test_normalised_gate_fails_on_a_relative_slowdown(tmp_path, capsys):
    compare = _load_perf("compare")
    base = _suite(tmp_path / "base.json", _scaled(1.0), clock="cpu", runs=12)  # 3 merged runs, as CI's
    # 2x slower machine, poll_read 3x slower than that: 6x in raw time
    slow = _suite(tmp_path / "slow.json", _scaled(2.0, poll_read=3.0), clock="cpu")
    assert compare.main([base, slow]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in CORE}
    assert rows["poll_read"].endswith("REGRESSION") and "+200.0%" in rows["poll_read"]
    assert not rows["batch_validate"].endswith("REGRESSION") and "+0.0%" in rows["batch_validate"]
    assert "PERF REGRESSION: 1 benchmark(s) more than 60 % slower" in out and "poll_read +200 %" in out
    assert compare.REBASELINE in out  # how to re-baseline when the slowdown is intended
    # a 2x faster machine on which our code kept its old raw time: 2x slower relative to it
    same_raw = _suite(tmp_path / "same_raw.json", _scaled(0.5, batch_validate=2.0), clock="cpu")
    assert compare.main([base, same_raw]) == 1
    assert "batch_validate +100 %" in capsys.readouterr().out
    # 1.3x relative is inside the default threshold, not inside a tighter one
    mild = _suite(tmp_path / "mild.json", _scaled(2.0, frame_parse_small=1.3), clock="cpu")
    assert compare.main([base, mild]) == 0
    assert compare.main([base, mild, "--threshold", "0.2"]) == 1


def test_normalised_gate_uses_min_of_cpu_time(tmp_path):
    """CPU time only grows under contention: 3x values in a run (most of them) are ignored by the
    min of the cpu clock; the median used for the wall clock is pulled up by them."""
    compare = _load_perf("compare")
    base = _suite(tmp_path / "base.json", _scaled(1.0), clock="cpu")
    bursty = _suite(tmp_path / "bursty.json", _scaled(1.0), clock="cpu", bursts=("poll_read",))
    assert compare.main([base, bursty]) == 0
    wall_base = _suite(tmp_path / "wall_base.json", _scaled(1.0), clock="wall")
    wall_bursty = _suite(tmp_path / "wall_bursty.json", _scaled(1.0), clock="wall", bursts=("poll_read",))
    assert compare.main([wall_base, wall_bursty]) == 1
    assert compare.estimator("cpu") is min and compare.estimator("wall") is not min

    class Bench:
        def __init__(self, *values):
            self.values = values

        def get_values(self):
            return self.values

    suite = {"a": Bench(1.0, 5.0), "b": Bench(4.0, 4.5)}
    assert compare.calibration_scale(suite, ["a", "b"], min) == pytest.approx(2.0)  # geometric mean


def test_gate_refuses_mixed_clocks(tmp_path, capsys):
    compare = _load_perf("compare")
    base = _suite(tmp_path / "base.json", _scaled(1.0), clock="cpu")
    wall = _suite(tmp_path / "wall.json", _scaled(1.0), clock="wall")
    assert compare.main([base, wall]) == 2
    assert "different clocks" in capsys.readouterr().out


def test_bench_core_time_functions_run(monkeypatch):
    """Every benchmark and calibration function of the real suite times two loops (the suite
    itself runs in scripts/test.sh, after pytest)."""
    monkeypatch.setattr(sys, "argv", ["bench_core.py"])
    bench = _load_perf("bench_core")
    import time

    assert bench.CLOCK is time.process_time
    funcs = [getattr(bench, n) for n in dir(bench) if n.startswith("time_")]
    assert {f.__name__ for f in funcs} >= {
        "time_calibration_hash_copy",
        "time_calibration_py_loop",
        "time_calibration_file_io",
        "time_poll_read",
        "time_log_append",
    }
    for func in funcs:
        assert 0 < func(2) < 5, func.__name__
    # what pyperf runs: every function once, each with its fixed operations per loop
    assert {f for _, f in bench.SUITE} == set(funcs)
    assert [n for n, _ in bench.SUITE] == list(bench.OPS_PER_LOOP)
    assert sum(n.startswith("calibration_") for n, _ in bench.SUITE) == 3


def test_bench_core_quick_runs_passes_appended(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["bench_core.py"])
    bench = _load_perf("bench_core")
    calls = []
    monkeypatch.setattr(bench.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    out = tmp_path / "new.json"
    assert bench.main(["--quick", "-q", "-o", str(out)]) == 0
    assert len(calls) == bench.QUICK_PASSES == 2
    for cmd in calls:
        assert cmd[:2] == [sys.executable, str(REPO / "perf" / "bench_core.py")]
        assert "--quick" not in cmd and "-o" not in cmd and cmd[-2:] == ["--append", str(out)]
        assert cmd[2 : 2 + len(bench.QUICK_ARGS)] == bench.QUICK_ARGS and "-q" in cmd
    # 2 passes x 2 worker processes x 6 values: 24 values per benchmark and run; fixed loops, so
    # pyperf spawns no loop-calibration process
    args = dict(zip(bench.QUICK_ARGS[::2], bench.QUICK_ARGS[1::2], strict=True))
    assert bench.QUICK_PASSES * int(args["--processes"]) * int(args["--values"]) == 24
    assert args["--loops"] == "1"
    calls.clear()
    assert bench.main(["--quick", "--append=" + str(out), "--clock", "wall"]) == 0
    assert all(cmd[-2:] == ["--append", str(out)] and "wall" in cmd for cmd in calls)
    # -o refuses an existing file, as pyperf does; a failing pass stops the rest
    out.write_text("{}")
    calls.clear()
    assert bench.main(["--quick", "-o", str(out)]) == 2 and calls == []
    monkeypatch.setattr(bench.subprocess, "call", lambda cmd: calls.append(cmd) or 1)
    assert bench.main(["--quick", "--append", str(out)]) == 1 and len(calls) == 1
