"""A typed, in-process binding of libnftables: nftables JSON in, errors out.

Owns the only calls into ``libnftables.so.1`` (through ctypes: the venv's
interpreter cannot import Debian's python3-nftables) and the translation of
nft's failures into :class:`~butterfly.errors.DataplaneError`. A list of
commands given to :meth:`Nftables.apply` is one nft run, and nft commits one
run as one kernel transaction: it applies entirely or not at all.

Knows nothing of butterfly's tables; :mod:`butterfly.dataplane.ruleset`
decides what to send. :class:`NftablesApi` is what the rest of the data
plane needs of it, so its logic runs on an in-memory one in unit tests.
"""

import ctypes
import json
from collections.abc import Sequence
from typing import Any, Protocol

from butterfly.dataplane.kernel_errors import explain_text
from butterfly.errors import DataplaneError

__all__ = ["Json", "Nftables", "NftablesApi"]

Json = dict[str, Any]


class NftablesApi(Protocol):
    """What the data plane asks of nft (see :class:`Nftables` for each call)."""

    def apply(self, commands: Sequence[Json]) -> None: ...

    def run_text(self, commands: str) -> None: ...

    def list(self, what: Json) -> list[Json] | None: ...


LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4
_OUTPUT_HANDLE = 1 << 3
_NO_SUCH_OBJECT = "No such file or directory"


class Nftables:
    """One libnftables context, bound to the network namespace of its creator.

    nft opens its netlink socket in the namespace of the thread that creates
    the context, so create it where the kernel objects live.
    """

    def __init__(self, *, library: str = LIBRARY) -> None:
        try:
            lib = ctypes.CDLL(library, use_errno=True)
        except OSError as exc:
            raise DataplaneError(
                f"nftables: cannot load {library} (Debian package libnftables1): {exc}"
            ) from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise DataplaneError("nftables: nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON | _OUTPUT_HANDLE)
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise DataplaneError("nftables: cannot buffer libnftables output")
        self._lib = lib
        self._ctx: int | None = ctx

    def apply(self, commands: Sequence[Json]) -> None:
        """Run ``commands`` (``{"add": {...}}``...) as one atomic transaction."""
        if commands:
            self._run({"nftables": list(commands)})

    def run_text(self, commands: str) -> None:
        """Run commands in nft's own syntax, for what its JSON cannot say (typeof)."""
        self._run_buffer(commands)

    def list(self, what: Json) -> list[Json] | None:
        """The objects of ``{"table": {...}}`` (or any list target); None when absent."""
        try:
            output = self._run({"nftables": [{"list": what}]})
        except DataplaneError as exc:
            if _NO_SUCH_OBJECT in str(exc):
                return None
            raise
        if not output.strip():
            return []
        objects: list[Json] = json.loads(output)["nftables"]
        return [obj for obj in objects if "metainfo" not in obj]

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def _run(self, document: Json) -> str:
        return self._run_buffer(json.dumps(document))

    def _run_buffer(self, text: str) -> str:
        """One nft run; nft reads JSON when the text is JSON, its own syntax otherwise."""
        if self._ctx is None:
            raise DataplaneError("nftables: the context is closed")
        status = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if status != 0:
            raise DataplaneError(explain_text("nftables refused the change", _clean(error)))
        return output


def _clean(error: str) -> str:
    """nft's messages without the JSON parser's meaningless location prefix."""
    lines = [line.removeprefix("internal:0:0-0: ").strip() for line in error.splitlines()]
    return "; ".join(line for line in lines if line) or "no message from nft"
