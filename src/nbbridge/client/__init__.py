"""The nbbridge-client daemon."""
