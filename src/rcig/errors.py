"""The one exception type users see.

Anything a user can cause (a wrong path, an unknown dataset spec, a bad config key, a
diverged run) raises :class:`RcigError` with a one-line message that names the problem.
The command line prints ``rcig: error: <message>`` and exits with status 2; it never shows
a traceback for these. Bugs inside rcig stay ordinary exceptions.
"""


class RcigError(Exception):
    """A user-facing error whose message is one line naming the problem."""
