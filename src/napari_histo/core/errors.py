"""Exceptions and warnings that carry a message meant for the user."""


class HistoError(Exception):
    """Base class: the message is shown to the user as is (one line, names the input)."""


class ImageReadError(HistoError, ValueError):
    """A file could not be read as an RGB image; the message names the file and why."""


class InputWarning(UserWarning):
    """Something about an input was fixed up (alpha dropped, NaN filled, no tissue found...)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__
