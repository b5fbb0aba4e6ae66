"""The one exception type for mistakes a user can make (bad file, bad argument, bad bundle).

The CLI and the studio catch it at the boundary and show its message, one plain sentence, with
exit code 2. Internal invariants stay asserts.
"""


class BadInput(ValueError):
    """A user-caused problem, with a one-sentence message saying what was wrong and what to do."""
