"""The one exception type users see.

Anything a user can cause (a wrong path, an unknown dataset spec, a bad config key, a
diverged run) raises :class:`RcigError` with a one-line message that names the problem.
The command line prints ``rcig: error: <message>`` and exits with status 2; it never shows
a traceback for these. Bugs inside rcig stay ordinary exceptions.
"""


class RcigError(Exception):
    """A user-facing error whose message is one line naming the problem."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (Python's, or torch's on a CPU or GPU): the
    user's to lower the run's size, not a bug."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "not enough memory" in text or \
        "can't allocate memory" in text
