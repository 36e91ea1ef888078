"""The one exception type for bad user input.

Anything raised as `UserError` is printed by the CLI as a single line and exits with code 2, before any
compute and without touching the workdir. The message names the problem and says how to fix it. One comes
later: a full disk while saving stops the run with the newest complete checkpoint intact.
"""


class UserError(Exception):
  """Bad config value, missing dataset, incompatible checkpoint: anything the user can fix."""


class NonFiniteLoss(Exception):
  """The loss became NaN or Inf; the run stopped and the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint was saved at the step boundary that followed."""
