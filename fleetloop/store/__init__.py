"""Shared storage: objects (local directory, S3), the log registry, the store's key layout, locks."""
