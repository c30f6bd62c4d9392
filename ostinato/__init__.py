"""ostinato: shared code of all services (workflow semantics, journal, rpc helpers, tracing, CLI).

grpc reads GRPC_ENABLE_FORK_SUPPORT when it is first imported, and its default has changed between
releases; with it off, spawning job processes and pysyncobj's forked snapshots work beside live
streams. Every service package imports this package before grpc.
"""

import os

os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
