"""Storage: everything that lives in files under `system.path` except the metadata journal.

- `log` (Cython): a partition's segment files (`.log` + `.index`), append, index seek, read,
  startup check, the process-wide LRU of open segment files.
- `offset_store` (Cython): stored consumer and consumer-group offsets, one small file each.
- `partitions`: the partitions of every topic, their directories, create/delete, quarantine.
- `consumer_offsets`: the Python view of stored offsets (kinds, keys).
- `retention`: message expiry and size-based cleanup of sealed segments.
- `fsutil`: durable directory creation (the parent is fsynced).
"""
