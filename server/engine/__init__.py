"""The profile engine: pure functions from source records to unified profiles.

No I/O, no clock, no globals: mapping (change event → source record), identity resolution (which
records are one person) and survivorship (which value of each field wins). The store and the ingest
loop call into it; property tests live here.
"""
