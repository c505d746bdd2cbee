"""nbbridge.wire."""
