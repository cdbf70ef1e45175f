"""kiln operators: pure transforms of pyarrow tables, registered by name. No Ray here."""
