"""Errors a user can fix: entry points print their message on one line and exit with 2."""


class RecsysError(Exception):
    """Bad input or configuration; the message names the setting, column or file at fault."""
