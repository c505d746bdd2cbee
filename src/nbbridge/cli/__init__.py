"""nbbridge.cli."""
