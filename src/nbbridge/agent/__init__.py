"""The nbbridge-agent daemon."""
