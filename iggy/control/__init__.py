"""The control plane: sessions and dispatch (plane), the command registry and the one
permission check (registry, permissions), entity lookups (lookup), and one module per area
whose commands register themselves when imported (streams, topics, groups, messages, users,
tokens, system; and iggy.cluster.routing). `iggy.control.plane` imports them all."""
