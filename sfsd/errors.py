"""User-facing errors: the CLI prints these as one line, without a traceback."""


class SfsdError(Exception):
    """A mistake in what the user asked for, with a hint on what to do instead."""
