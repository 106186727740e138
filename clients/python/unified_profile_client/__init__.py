"""Python client of the unified-profile ProfileService (generated stubs in ``unified_profile.v1``)."""
