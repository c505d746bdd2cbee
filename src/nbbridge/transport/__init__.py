"""nbbridge.transport."""
