"""Exceptions raised when the kernel side cannot be set up or driven.

Each carries one sentence that says what is wrong and what to do about it.
"""

from __future__ import annotations


class MarkerError(Exception):
    """Base class: the classifier could not be loaded, attached or driven."""


class NotSupportedError(MarkerError):
    """This host cannot run the classifier at all (not Linux, no extension)."""


class MissingPrivilegeError(MarkerError):
    """The process lacks a capability the operation needs."""


class ObjectError(MarkerError):
    """The BPF object file is missing, unreadable or not a BPF object."""


class VerifierError(MarkerError):
    """The kernel's verifier rejected the program.

    ``log`` holds its whole output and ``reason`` the line that says why.
    """

    def __init__(self, message: str, log: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.log = log
        self.reason = reason


class InterfaceError(MarkerError):
    """A network interface does not exist or cannot be used."""


class AttachConflictError(MarkerError):
    """Something already sits where the classifier would attach."""


class MapFullError(MarkerError):
    """The flow map has no room for another flow."""
