"""`iggy-server` / `python -m iggy`: flags, configuration, logging, then the server.

Flags as Apache Iggy's server has them: `--fresh` deletes the data directory before start,
`--with-default-root-credentials` makes the root user iggy/iggy unless IGGY_ROOT_* are set.
`--replica-id N` picks this node's entry of the cluster roster (cluster.nodes), as upstream.
Ours: `--repair-metadata` starts on a corrupt metadata journal by keeping the records before
the damage (the operator accepts losing the rest; see iggy.metadata.journal): the journal is
moved aside, the kept state written as a new snapshot, the dropped records logged, and the
server then runs normally (later starts need no flag). Corrupt metadata or an orphan directory
that can't be moved to quarantine stops the server with one error line and exit status 3.
A `.env` file (cwd, or IGGY_ENV_PATH) is read first without overriding the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence

from iggy import __version__
from iggy.config import ConfigError, load_config, root_credentials


def load_dotenv(path: str) -> None:
    """KEY=VALUE lines (# comments, optional `export`, optional quotes); the environment wins."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def _fresh(path: str) -> None:
    target = os.path.realpath(path)
    if target in ("/", os.path.realpath(os.getcwd())):
        raise ConfigError(f"system.path: refusing to delete {target} for --fresh")
    if os.path.isdir(target):
        shutil.rmtree(target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iggy-server", description="Apache Iggy-compatible streaming server")
    parser.add_argument("-f", "--fresh", action="store_true", help="delete the data directory before starting")
    parser.add_argument(
        "--with-default-root-credentials",
        action="store_true",
        help="root user iggy/iggy unless IGGY_ROOT_USERNAME/PASSWORD are set",
    )
    parser.add_argument(
        "--repair-metadata",
        action="store_true",
        help="start on a corrupt metadata journal, keeping the records before the damage and "
        "dropping the rest (the damaged journal is kept as journal.log.corrupt-<time>)",
    )
    parser.add_argument("--config", metavar="PATH", help="TOML configuration file (as IGGY_CONFIG_PATH)")
    parser.add_argument(
        "--replica-id",
        type=int,
        metavar="N",
        help="with cluster.enabled: this node is the cluster.nodes entry whose replica_id is N "
        "(its ports are the listeners' ports; docs/CLUSTER.md)",
    )
    parser.add_argument("--version", action="version", version=f"iggy-server {__version__}")
    args = parser.parse_args(argv)

    load_dotenv(os.environ.get("IGGY_ENV_PATH", ".env"))
    if args.with_default_root_credentials and not (
        os.environ.get("IGGY_ROOT_USERNAME") or os.environ.get("IGGY_ROOT_PASSWORD")
    ):
        os.environ["IGGY_ROOT_USERNAME"] = "iggy"
        os.environ["IGGY_ROOT_PASSWORD"] = "iggy"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(path=args.config, replica_id=args.replica_id)
        root_credentials()
        if args.fresh:
            _fresh(cfg.system.path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    level = cfg.system.logging.level.upper()
    logging.getLogger().setLevel({"TRACE": "DEBUG", "WARN": "WARNING"}.get(level, level))

    from iggy.cluster.standing import StandingError
    from iggy.metadata.journal import MetadataCorrupt
    from iggy.server.node import run_server
    from iggy.storage.leader_epochs import LeaderEpochsCorrupt
    from iggy.storage.partitions import QuarantineError

    try:
        run_server(cfg, repair_metadata=args.repair_metadata)
    except (MetadataCorrupt, QuarantineError, LeaderEpochsCorrupt, StandingError) as exc:
        logging.getLogger("iggy.server").error("%s", exc)
        return 3
    return 0
