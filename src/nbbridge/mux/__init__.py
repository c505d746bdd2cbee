"""nbbridge.mux."""
