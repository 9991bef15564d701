"""User errors: mistakes a user can fix (a path, a key, a file), reported as one message and exit status 2.

Every console script runs its library function through :func:`run_console`. An exception that is a
:class:`UserError` prints ``<prog>: error: <message>`` on stderr (no traceback) and exits with status 2; with
``--debug`` the traceback is printed as well. Anything else is a bug and keeps its traceback.

The concrete classes also derive from the builtin exception a caller would catch without knowing this module
(``ValueError``, ``FileNotFoundError``, ``KeyError``), so ``except ValueError`` keeps working in library code.
"""
from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable, Sequence, TypeVar

__all__ = [
    "UserError",
    "InputError",
    "MissingPathError",
    "UnknownNameError",
    "CheckpointError",
    "OptionTypeError",
    "run_console",
    "EXIT_USER_ERROR",
]

EXIT_USER_ERROR = 2

T = TypeVar("T")


class UserError(Exception):
    """Base class: the user can fix this (the message says what and where). Console scripts exit with 2."""

    def __str__(self) -> str:  # KeyError quotes its message; a user error never should
        return str(self.args[0]) if self.args else ""


class InputError(UserError, ValueError):
    """A bad value: an option, an image file's content, a data layout, a checkpoint that does not fit."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class UnknownNameError(UserError, KeyError):
    """An unknown name (a ``type:``, a metric, a preset); the message lists the known ones."""


class CheckpointError(InputError):
    """A checkpoint cannot be read or does not match the network it is loaded into."""


class OptionTypeError(InputError, TypeError):
    """An option of the wrong type, or options a part cannot be built with (``type:`` plus keyword arguments).

    Still a ``TypeError`` (what Python raises for a bad keyword argument), and an :class:`InputError`: a user error
    (one line, exit 2) that code catching bad option values (``InputError``/``ValueError``) also catches.
    """


def _worker_message(message: str) -> str:
    """The user's message of an error re-raised from a DataLoader worker, on one line.

    torch re-raises a worker's exception in the main process as the same type whose message is ``Caught <Type> in
    DataLoader worker process N.`` followed by the worker's whole traceback; its last line is ``<module.Type>:
    <original message>``. Any other message is returned unchanged.
    """
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].startswith("Caught ") or "Original Traceback" not in message:
        return message
    where = lines[0][len("Caught "):].split(" in ", 1)[-1].rstrip(".")  # "DataLoader worker process 0"
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    original = rest if sep and "." in head and " " not in head else last  # drop "ddr_restore.errors.InputError: "
    return f"{original} (in {where})"


def run_console(prog: str, fn: Callable[[], T], debug: bool = False,
                extra_user_errors: Sequence[type] = ()) -> T:
    """Call ``fn()``; turn a :class:`UserError` (or one of ``extra_user_errors``) into one line and exit 2.

    The full traceback goes to the ``ddr_restore`` logger at DEBUG level (a run's log file keeps it) and, with
    ``debug=True``, to stderr as well.
    """
    try:
        return fn()
    except (UserError, *extra_user_errors) as err:  # type: ignore[misc]
        tb = traceback.format_exc()
        logging.getLogger("ddr_restore").debug("%s: user error\n%s", prog, tb)
        if debug:
            print(tb, file=sys.stderr, end="")
        message = str(err) if not isinstance(err, KeyError) or isinstance(err, UserError) else str(err.args[0])
        print(f"{prog}: error: {_worker_message(message)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None

