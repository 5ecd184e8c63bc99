"""semrl: extend a language model to a low-resource language and measure the alignment tax it costs."""

__version__ = "0.1.0"


class SemrlError(Exception):
    """An error a user can act on; the CLI prints its message as one line, without a traceback."""
