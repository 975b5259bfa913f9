"""The errors a user's input causes (a bad file, setting or argument), as opposed to bugs.

Every one derives from :class:`InputError`: the CLIs print its message as one line and exit 2, the node
reports it on ``/diagnostics`` and keeps running. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Base of the errors caused by what a user handed in; the message names the input and what was expected.

    A ValueError, so code that validates values can keep catching those; but only InputError (not any
    ValueError) is reported to a user as one line.
    """


class ConfigError(InputError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class MapError(InputError, RuntimeError):
    """A reference map is missing, corrupt, of an unsupported version or incompatible with the pipeline."""
