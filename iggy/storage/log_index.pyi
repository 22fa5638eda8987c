"""iggy/storage/log_index.pyx has no Python-visible API (cimported by iggy.storage.log only)."""
