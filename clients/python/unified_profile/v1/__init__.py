"""Generated protobuf and gRPC modules of the unified_profile.v1 API (scripts/gen_protos.py)."""
