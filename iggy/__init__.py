"""iggy: a persistent message-streaming server compatible with Apache Iggy 0.9.0 clients."""

__version__ = "0.1.0"
SERVER_VERSION = "0.9.0"
