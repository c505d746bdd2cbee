"""nbbridge.store: state with expiring keys behind async interfaces (being built; issue 9)."""
