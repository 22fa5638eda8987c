"""The etcd fixture itself: it answers the v3 API through the client the server uses (aetcd),
including the lease + compare-and-swap transaction the election is built on."""

from __future__ import annotations

import aetcd


async def test_etcd_answers_leases_and_transactions(etcd):
    host, port = etcd.url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        lease = await client.lease(5)
        txn = client.transactions
        won, _ = await client.transaction(
            compare=[txn.create(b"/t/leader") == 0], success=[txn.put(b"/t/leader", b"a", lease=lease)], failure=[]
        )
        again, _ = await client.transaction(
            compare=[txn.create(b"/t/leader") == 0], success=[txn.put(b"/t/leader", b"b", lease=lease)], failure=[]
        )
        assert (won, again) == (True, False)
        value = await client.get(b"/t/leader")
        assert value.value == b"a" and value.lease == lease.id
        await lease.revoke()
        assert await client.get(b"/t/leader") is None
