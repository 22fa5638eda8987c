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
from iggy._core.batch import build_batch, compute_batch_checksum, iter_messages, random_id, validate_batch
from iggy._core.benchclient import PollFrame, RespError, SendFrame, resp_skip, resp_xread, scan_poll

from iggy.bench.cli import build_parser, config_from_args, parse_duration, parse_size
from iggy.bench.metrics import ActorMetrics, group_summary, latency_stats, percentile
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
    assert bytes(stream) == b"\x01\x04" + struct.pack("<I", 3) and bytes(topic) == b"\x01\x04" + struct.pack(
        "<I", 4
    )
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
    assert (
        params["message_size"] == 100
        and params["messages_per_batch"] == 10
        and params["message_batches"] == 6
    )
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


def _suite(path, means: dict[str, float], spread: float = 0.01):
    import pyperf

    benchmarks = []
    for name, mean in means.items():
        runs = []
        for r in range(4):
            values = [mean * (1 + spread * ((r * 5 + i) % 7 - 3) / 3) for i in range(5)]
            runs.append(
                pyperf.Run(
                    values, metadata={"name": name, "loops": 1, "unit": "second"}, collect_metadata=False
                )
            )
        benchmarks.append(pyperf.Benchmark(runs))
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
