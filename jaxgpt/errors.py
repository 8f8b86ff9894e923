"""The one exception type for mistakes a user can make (bad config, missing file, ...).

Library code raises `UserError` with a single line that names the problem and the fix; the command-line
entry points catch it, print `error: <message>` and exit with status 2, so no traceback reaches the user.
Internal invariants use plain assertions instead.
"""


class UserError(Exception):
    """A problem in the user's input, described in one line that says how to fix it."""
