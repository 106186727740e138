"""unified-profile service: engine, store, serving, command line."""

import os

# gRPC's at-fork handlers are for children that go on using gRPC. Ours never do: the
# service forks only to exec (the development stack's PostgreSQL and broker, commands run
# by tests). With those handlers on, a child forked while other threads were inside gRPC
# crashed before it could exec (about one fork in three under load). Set before grpc is
# imported anywhere in the service; an explicit setting in the environment still wins.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
