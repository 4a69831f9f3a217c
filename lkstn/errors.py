"""Errors that reach the user as one line.

:class:`UsageError` is bad arguments or unreadable input: the ``lkstn`` command prints it as
``lkstn: error: ...`` and exits with code 2. Library code outside the command raises
``ValueError`` naming the argument (see DESIGN.md); the command turns those into usage errors
where the argument came from the user.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """Bad arguments or unreadable input: reported in one line with exit code 2."""
