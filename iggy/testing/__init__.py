"""Test helpers for applications that use Iggy: a real server per test, no Docker.

`IggyTestServer` runs one server process on free loopback ports with its own data directory;
the pytest plugin (`iggy.testing.plugin`, registered as the `pytest11` entry point `iggy`)
turns it into the `iggy_server` and `iggy_server_factory` fixtures.
"""

from iggy.testing.server import IggyServerError, IggyTestServer

__all__ = ["IggyServerError", "IggyTestServer"]
