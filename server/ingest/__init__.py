"""Ingest: turning change events into stored profiles (one transaction per batch)."""
