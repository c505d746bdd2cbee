"""The error every `nbbridge` subcommand raises for something the user can fix."""


class UserError(Exception):
    """Printed as one line after `nbbridge: `, exit status 2; never a traceback."""
