"""unified-profile service: engine, store, serving, command line."""
