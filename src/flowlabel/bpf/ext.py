"""The ``flowlabel._bpf`` extension: the one place it is imported, and errno turned into errors.

Importing this module works everywhere; :func:`extension` fails with a clear
:class:`~flowlabel.errors.NotSupportedError` where the kernel side cannot run.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from ..errors import MarkerError, MissingPrivilegeError, NotSupportedError, ObjectError

#: The privileges the kernel side needs, as error messages name them.
PRIVILEGES = "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"


def extension() -> tuple[Any, Any]:
    """The extension's ``ffi`` and ``lib``, or NotSupportedError off Linux."""
    if not sys.platform.startswith("linux"):
        raise NotSupportedError(f"the flow-label marker needs Linux with eBPF; this is {sys.platform}")
    try:
        from .. import _bpf  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:
        raise NotSupportedError(
            f"the flowlabel._bpf extension is missing ({exc}); install flowlabel from its wheel"
        ) from exc
    return _bpf.ffi, _bpf.lib


_Owner = TypeVar("_Owner", bound="KernelObject")


class KernelObject:
    """Holds kernel objects (programs, links, maps) until :meth:`close`, which a ``with`` block
    and garbage collection call too."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Owner) -> _Owner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()


def libbpf_version() -> str:
    """The version of the libbpf linked into the extension."""
    ffi, lib = extension()
    return str(ffi.string(lib.libbpf_version_string()).decode())


def bundled_object(name: str = "marker") -> Path:
    """A BPF object shipped inside the package: ``marker`` (the classifier), ``writer`` (its direct
    writer) or ``sockets``."""
    from importlib import resources

    return Path(str(resources.files("flowlabel").joinpath(f"{name}.bpf.o")))


def errno_error(what: str, err: int) -> MarkerError:
    """The exception that explains a libbpf or kernel errno (either sign)."""
    err = abs(err)
    if err in (errno.EPERM, errno.EACCES) and os.geteuid() != 0:
        return MissingPrivilegeError(f"{what}: permission denied; run as root or grant {PRIVILEGES}")
    if err == errno.EPERM:
        return MissingPrivilegeError(f"{what}: operation not permitted; the process needs {PRIVILEGES}")
    return MarkerError(f"{what}: {os.strerror(err)} (errno {err})")


def counter_names() -> list[str]:
    """Counter names in map order, from marker.h's enum (``FLOWLABEL_CNT_SEEN`` -> ``seen``)."""
    _, lib = extension()
    prefix = "FLOWLABEL_CNT_"
    found = {
        name[len(prefix):].lower(): getattr(lib, name)
        for name in dir(lib)
        if name.startswith(prefix) and name != prefix + "MAX"
    }
    return sorted(found, key=found.__getitem__)


def key_struct(ffi: Any) -> struct.Struct:
    """``struct flow_key`` as flowlabel.flow packs it, checked against the layout of bpf/marker.h.

    The extension was built from marker.h, so the offsets cffi read from it are
    the classifier's; a package whose Python side disagrees refuses to run.
    """
    from ..flow import FLOW_KEY, PROTOCOL_NUMBERS

    fields = {"saddr": "16s", "daddr": "16s", "sport": "H", "dport": "H", "proto": "B"}
    fmt, pos = ">", 0
    for name in sorted(fields, key=lambda n: ffi.offsetof("struct flow_key", n)):
        offset = ffi.offsetof("struct flow_key", name)
        fmt += f"{offset - pos}x" * (offset > pos) + fields[name]
        pos = offset + struct.calcsize(">" + fields[name])
    size = ffi.sizeof("struct flow_key")
    fmt += f"{size - pos}x" * (size > pos)
    _, lib = extension()
    numbers = {"tcp": lib.FLOWLABEL_PROTO_TCP, "udp": lib.FLOWLABEL_PROTO_UDP}
    if struct.calcsize(fmt) != FLOW_KEY.size or fmt != FLOW_KEY.format or numbers != PROTOCOL_NUMBERS:
        raise ObjectError(f"bpf/marker.h's struct flow_key ({fmt}) or protocol numbers differ from "
                          f"flowlabel.flow's ({FLOW_KEY.format}): a broken build")
    return FLOW_KEY
