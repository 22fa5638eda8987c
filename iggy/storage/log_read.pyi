"""iggy/storage/log_read.pyx has no Python-visible API (cimported by iggy.storage.log only)."""
