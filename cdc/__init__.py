"""Capture: PostgreSQL logical decoding to Debezium-format change events."""
