"""The controller service. Importing ostinato first sets grpc's process-wide environment."""

import ostinato  # noqa: F401
