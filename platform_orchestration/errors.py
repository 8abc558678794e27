"""The one exception root of the package, and the exit codes the CLI maps it to.

Every layer raises a subclass of :class:`PlatformError`, or wraps what a library raised
(psycopg, a cloud SDK, hvac) into one, so the CLI and the Dagster ops catch one type
and print one line; anything else that escapes is a bug and is reported as one.

A message names what failed, where, and why, in one line, and never carries a secret
(passwords, tokens, data keys): messages reach terminals, logs and Dagster's run metadata.

The CLI's exit codes (documented in the README):

====  =====================================================================
0     done
1     the operation failed (the reason is the one line on stderr)
2     the fleet file (or a declaration, or the command line) is invalid
3     a backup was taken, but a required store got no verified copy
4     another backup, prune or rewrap of the database holds its lock
5     unexpected internal error (a bug): one line, ``--debug`` for the traceback
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_PARTIAL = 3
EXIT_BUSY = 4
EXIT_BUG = 5


class PlatformError(Exception):
    """Something the operator can act on; ``str(exc)`` is the whole, one-line story."""

    exit_code = EXIT_FAILED


class InvalidDeclaration(PlatformError):
    """A reviewed declaration (fleet file, job or schedule spec, run config) cannot be used."""

    exit_code = EXIT_INVALID


class Busy(PlatformError):
    """Another operation on the same database holds its lock; nothing was changed."""

    exit_code = EXIT_BUSY


def one_line(text: object, limit: int = 2000) -> str:
    """A message squeezed onto one line (library errors often span several), tail kept when long.

    >>> one_line("connection failed\\n\\tIs the server running?\\n")
    'connection failed / Is the server running?'
    """
    parts = [part.strip() for part in str(text).splitlines() if part.strip()]
    flat = " / ".join(parts)
    return flat if len(flat) <= limit else "..." + flat[-limit:]
