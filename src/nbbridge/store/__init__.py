"""nbbridge.store."""
