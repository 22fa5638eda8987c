"""`iggy-bench`: the load tool of Apache Iggy, for this server (and any 0.9.0-protocol server).

Scenarios, options and report follow upstream `core/bench` (pinned-producer, pinned-consumer,
pinned-producer-and-consumer, balanced-producer, balanced-consumer-group, end-to-end
producing consumer). The client side is raw asyncio TCP with one connection per actor; each
batch is encoded once and re-stamped per send in C (`iggy.bench.fastclient`), so the tool
measures the server rather than itself.

    iggy-bench pinned-producer --producers 2 tcp --server-address 127.0.0.1:8090
    iggy-bench --message-size 100 --total-data 1GB --json out.json pinned-producer-and-consumer tcp

Programmatic use: `iggy.bench.runner.BenchConfig` + `run_benchmark` (perf/compare_peers.py).
"""
