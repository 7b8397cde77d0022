"""A BPF object file opened and loaded through libbpf, with errors that say why not."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from ..errors import MissingPrivilegeError, ObjectError, VerifierError
from .ext import errno_error, extension
from .features import memlock_advice, memlock_charged, raise_memlock_limit

#: Lines of the verifier log kept in a VerifierError's message.
VERIFIER_TAIL_LINES = 20


def _log_tail(text: str, lines: int = VERIFIER_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _verifier_reason(log: str) -> str:
    """The verifier's own verdict: the line just before its ``processed N insns`` summary."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("processed ") and " insns" in line and i > 0:
            return lines[i - 1]
    return next((line for line in reversed(lines) if not line.startswith("libbpf:")), "")


def open_object(path: Path) -> Any:
    """libbpf's ``struct bpf_object *`` for the BPF object file at ``path``, opened, not loaded."""
    ffi, lib = extension()
    if not path.is_file():
        raise ObjectError(f"BPF object {path} does not exist")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ObjectError(f"cannot read BPF object {path}: {exc.strerror}") from exc
    if magic != b"\x7fELF":
        raise ObjectError(f"{path} is not a BPF object (not an ELF file)")
    lib.fl_log_clear()
    obj = lib.bpf_object__open_file(os.fsencode(path), ffi.NULL)
    if obj == ffi.NULL:
        detail = _log_tail(ffi.string(lib.fl_log_text()).decode(errors="replace"), 3)
        raise ObjectError(f"{path} is not a usable BPF object: {detail or os.strerror(ffi.errno)}")
    return obj


def load_object(obj: Any, path: Path) -> None:
    """Load an opened object into the kernel; the error says why it was refused."""
    ffi, lib = extension()
    raise_memlock_limit()
    lib.fl_log_clear()
    err = lib.bpf_object__load(obj)
    if not err:
        return
    text = ffi.string(lib.fl_log_text()).decode(errors="replace")
    if abs(err) == errno.EPERM and memlock_charged():
        raise MissingPrivilegeError(f"loading {path.name}: operation not permitted; {memlock_advice()}")
    if abs(err) == errno.EPERM or (abs(err) == errno.EACCES and "processed" not in text):
        raise errno_error(f"loading {path.name}", err)
    raise VerifierError(
        f"the kernel's verifier rejected {path.name} ({os.strerror(abs(err))}); "
        "the end of its log:\n" + _log_tail(text),
        text,
        _verifier_reason(text),
    )
