"""The gRPC edge: ``unified_profile.v1.ProfileService`` on a ``grpc.aio`` server.

- ``settings``: ``[grpc]`` (listen address, tokens and scopes, TLS / mTLS, limits);
- ``auth``: the bearer-token interceptor (constant-time token check, per-method scopes);
- ``errors``: the one table from domain errors to status codes;
- ``convert`` / ``explain``: stored JSON and engine results → protobuf messages;
- ``validation``: request checks whose errors name the field;
- ``service`` / ``steward_ops``: the servicer and its merge / unmerge semantics;
- ``server``: building, starting and gracefully stopping the server.

Nothing is imported here: ``server.config`` imports ``settings``, and the servicer imports the
config in turn, so eager imports would be circular.
"""
