"""Cluster mode (docs/CLUSTER.md): several nodes, one leader elected through etcd.

    etcd.py        the etcd client: aetcd over the configured endpoints, every call with a deadline
    election.py    the lease, the campaign, the epoch and the fencing deadline
    membership.py  the roster as GET_CLUSTER_METADATA reports it, the commands a follower
                   serves, and what changes when this node gains or loses the leadership
    replica_frames.py  the replica link's frames, their bounds, the handshake MACs, epochs
    replica_link.py    the replica link: the leader's tcp_replica listener, a follower's connection
    follower_log.py    a follower appending the leader's stored batches, its ACKs and high-watermark
    replication.py     log replication of one node: streaming, majority acks, high-watermark, catch-up

Everything runs on the server's main event loop. Without `cluster.enabled` none of it is
imported.
"""
