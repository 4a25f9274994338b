"""The one exception tree of butterfly.

    ButterflyError
    ├── BadRequest          the caller asked for something invalid; nothing changed
    │   ├── BadNic          "Bad NIC format: ..."
    │   ├── BadRule         "Bad Security Group rule format: ..."
    │   ├── BadIp           "Bad IP format: ..."
    │   ├── NicNotFound     "NIC does not exist with id X"
    │   ├── SgNotFound      "Security Group not found: X"
    │   ├── BadSessions     "Bad session data: ..." (nic_import's blob)
    │   └── NotSupported    a feature this daemon does not offer (yet)
    ├── StoreError          the state file cannot be read or written
    ├── DataplaneError      the kernel refused a change (already rolled back)
    ├── ProtocolError       bytes on the wire that are not a valid message
    ├── ConfigError         a bad option or configuration file
    └── ClientError         the CLI cannot reach or understand the daemon

Messages start with the phrases deployed Butterfly daemons use (scripts grep
them), then name the object and the field at fault. Foreign exceptions
(sqlite3, pyroute2, nftables, zmq) are translated into these at the module
that talks to the foreign library, never further up.
"""

__all__ = [
    "BadIp",
    "BadNic",
    "BadRequest",
    "BadRule",
    "BadSessions",
    "ButterflyError",
    "ClientError",
    "ConfigError",
    "DataplaneError",
    "NicNotFound",
    "NotSupported",
    "ProtocolError",
    "SgNotFound",
    "StoreError",
    "shown",
]

_SHOWN_LIMIT = 80


def shown(value: str) -> str:
    """A caller's value quoted for an error message, cut so that a request
    carrying megabytes never gets them echoed back in its error."""
    if len(value) <= _SHOWN_LIMIT:
        return repr(value)
    return repr(value[:_SHOWN_LIMIT]) + f"... ({len(value)} characters)"


def _bare(value: str) -> str:
    """Unquoted as deployed daemons say it, unless too long to repeat."""
    return value if len(value) <= _SHOWN_LIMIT else shown(value)


class ButterflyError(Exception):
    """Base of every error butterfly raises on purpose."""


class BadRequest(ButterflyError):
    """A request that cannot be applied as asked; the state is unchanged."""


class BadNic(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Bad NIC format: {detail}")


class BadRule(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Bad Security Group rule format: {detail}")


class BadIp(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Bad IP format: {detail}")


class BadSessions(BadRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(f"Bad session data: {detail}")


class NicNotFound(BadRequest):
    def __init__(self, nic_id: str) -> None:
        super().__init__(f"NIC does not exist with id {_bare(nic_id)}")


class SgNotFound(BadRequest):
    def __init__(self, sg_id: str) -> None:
        super().__init__(f"Security Group not found: {_bare(sg_id)}")


class NotSupported(BadRequest):
    """Valid per the protocol, but not offered by this daemon."""


class StoreError(ButterflyError):
    """The SQLite state file is unreadable, corrupt or not writable."""


class DataplaneError(ButterflyError):
    """The kernel refused a change; the data plane rolled it back."""


class ProtocolError(ButterflyError):
    """Bytes that do not form a valid protocol message."""


class ConfigError(ButterflyError):
    """A bad command-line option, configuration file or key file."""


class ClientError(ButterflyError):
    """The CLI cannot reach the daemon or understand its answer."""
