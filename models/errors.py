"""The one base class of every failure whose message is meant for the user.

The command line and the bridge print such an error as one line and carry on (or exit
non-zero); anything else is a bug and keeps its traceback.
"""


class BacklineError(Exception):
    """An expected failure; str(error) says what is wrong and what to do."""
