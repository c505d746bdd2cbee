"""nbbridge.web."""
