"""Whether the API is exposed to whoever can reach the host: the start-up warning.

Owns the reading of an endpoint's bind address. The API can rewrite every
tenant's security groups; in clear text on a wildcard address anyone with a
route to any of the host's addresses (a tenant through a router, say) can
use it. Pure: the daemon logs what this answers.
"""

__all__ = ["exposure_warning"]

_WILDCARDS = {"*", "0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0", "[0:0:0:0:0:0:0:0]"}


def _tcp_host(endpoint: str) -> str | None:
    """The address part of a ``tcp://`` endpoint (without its port), else None."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme.lower() != "tcp":
        return None
    host, _, _ = rest.rpartition(":")
    if ";" in host:
        host = host.rpartition(";")[2]
    return host


def exposure_warning(endpoint: str, *, encrypted: bool) -> str | None:
    """The warning to log when ``endpoint`` listens on every address in clear text."""
    host = _tcp_host(endpoint)
    if encrypted or host is None or host not in _WILDCARDS:
        return None
    return (
        f"API endpoint {endpoint} listens on every address of this host without an "
        "encryption key: anyone who can reach the host (a tenant's VM through a router, "
        "say) can change every vnic and security group; bind the management or underlay "
        "address and set a key (-k)"
    )
