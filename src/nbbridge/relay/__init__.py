"""The nbbridge-relay daemon."""
