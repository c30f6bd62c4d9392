"""Named errors. Cores and stores raise these; only the gRPC edge turns them into status codes."""

from __future__ import annotations


class OstinatoError(Exception):
    """Root of every expected error. `field` names the offending input, when there is one."""

    code_name = "INTERNAL"

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def within(self, outer: str) -> OstinatoError:
        """The same error for a field named from further out (`outer`.field)."""
        return type(self)(self.message, field=f"{outer}.{self.field}" if self.field else outer)


class InvalidArgument(OstinatoError):
    code_name = "INVALID_ARGUMENT"


class NotFound(OstinatoError):
    code_name = "NOT_FOUND"


class AlreadyExists(OstinatoError):
    code_name = "ALREADY_EXISTS"


class FailedPrecondition(OstinatoError):
    """The request is well-formed but the state does not allow it, e.g. events already released."""

    code_name = "FAILED_PRECONDITION"


class StaleEpoch(FailedPrecondition):
    """A command from a JOC instance whose lease epoch is older than the newest one the controller
    has seen: a deposed JOC (paused, cut off) that does not know yet that another took over. It
    must not act any more; the JOC that did take over carries on."""


class Unavailable(OstinatoError):
    """A neighbour cannot be reached now; trying again later may work."""

    code_name = "UNAVAILABLE"


class NotActive(Unavailable):
    """This node of a cluster is passive: the caller must ask the active node, whose gRPC address
    travels in the trailing metadata (empty while no node is active)."""

    def __init__(self, message: str, active_address: str = "") -> None:
        self.active_address = active_address
        super().__init__(message)


class Deposed(Unavailable):
    """This node stopped being active while it handled the call (its journal refused the commit,
    or skipped it as a deposed node's): the caller should ask the active node. The gRPC edge
    answers like a passive node, naming the active one when it is known."""


class ResourceExhausted(OstinatoError):
    """What was asked for is more than one answer may hold: ask for less."""

    code_name = "RESOURCE_EXHAUSTED"


class PermissionDenied(OstinatoError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(OstinatoError):
    """The caller gave no credentials, or ones that name no account."""

    code_name = "UNAUTHENTICATED"


class SignatureRejected(PermissionDenied):
    """A signed item failed verification: unsigned, tampered, signed with another key than its
    certificate's, or its certificate expired or not trusted. The message names the item and why."""
