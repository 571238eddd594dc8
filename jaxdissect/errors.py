"""The one exception users catch: every bad input raises a subclass naming the culprit."""

from collections.abc import Iterable, Mapping


class DissectError(ValueError):
    """Bad input to jaxdissect; the message names the file, row, field or layer.

    A message about a Python argument names it in backticks as the library spells it
    (`` `kernel` ``, `` `length` ``) and lists it in ``arguments``; ``for_cli`` spells those
    as the command line's flags, so a Python caller never reads about flags it did not pass.
    """

    def __init__(self, message: str, *, arguments: Iterable[str] = ()):
        super().__init__(message)
        self.arguments = tuple(arguments)

    def for_cli(self, flags: Mapping[str, str] | None = None) -> str:
        """The message with each of ``arguments`` spelt as its flag: ``flags[name]``, or
        ``--name`` with dashes for underscores."""
        message = str(self)
        for name in self.arguments:
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            message = message.replace(f"`{name}`", flag)
        return message


def one_line(message: str) -> str:
    """``message`` with its line breaks written as ``\\n`` (a file named with one, or a
    path read from a file): an error or warning stays one line on stderr."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def check_regular_file(path, what: str = "file", error: type[Exception] | None = None) -> None:
    """Raises ``error`` (DissectError) naming ``path`` unless it is a regular file (or a link
    to one): "{what} not found", or "not a regular file" for a folder, FIFO or device (a
    FIFO would block its reader for ever; /dev/zero never ends)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        problem = "not a regular file" if path.exists() else f"{what} not found"
        raise (error or DissectError)(f"{path}: {problem}")


def notice(message: str) -> None:
    """``jaxdissect: message`` on stderr, one line (``one_line``): what a run did or left
    that the user should know of (a file moved aside, a folder kept)."""
    import sys

    print(f"jaxdissect: {one_line(message)}", file=sys.stderr, flush=True)


class BrodenFormatError(DissectError):
    """A Broden-format folder that cannot be read as such."""


class FeaturesError(DissectError):
    """Activations that disagree with the dataset, or that are not finite."""
