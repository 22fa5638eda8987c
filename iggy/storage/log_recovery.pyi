"""iggy/storage/log_recovery.pyx has no Python-visible API (cimported by iggy.storage.log only)."""
