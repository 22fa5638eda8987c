"""The control plane: one module per area, each registering its commands in `plane.COMMANDS`."""


def load_commands() -> None:
    """Import every command module once, so that their handlers are registered."""
    from iggy.cluster import routing  # noqa: F401  (14, 103, 104, 123: FeatureUnavailable on one node)
    from iggy.control import groups, messages, streams, system, tokens, topics, users  # noqa: F401
