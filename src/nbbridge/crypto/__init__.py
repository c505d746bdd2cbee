"""nbbridge.crypto."""
