"""The one exception type for mistakes a user can fix (bad flag, file, corpus line, config)."""


class UserError(Exception):
  """A problem with the user's input, reported as one line without a traceback.

  Scripts catch it at the top level (`tfsys.cli.run`) and exit with status 2.
  """
