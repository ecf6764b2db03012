"""The one base of every error mathgrpo raises for something a user can fix (a setting, a file, a model, a stop
that saved the run): the command line prints its message as one line; the Python API raises it as it is."""


class Error(Exception):
    """A problem the message explains, with what to do about it."""
