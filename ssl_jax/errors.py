"""The one exception type for bad user input.

Anything raised as `UserError` is printed by the CLI as a single line and exits with code 2, before any
compute and without touching the workdir. The message names the problem and says how to fix it. One comes
later: a full disk while saving stops the run with the newest complete checkpoint intact.
"""
import sys


class UserError(Exception):
  """Bad config value, missing dataset, incompatible checkpoint: anything the user can fix."""


class NonFiniteLoss(Exception):
  """The loss became NaN or Inf; the run stopped and the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM/SIGINT arrived; a checkpoint was saved at the step boundary that followed."""


def hide_closed_event_loop_errors() -> None:
  """Drops 'Event loop is closed' RuntimeErrors reported through sys.excepthook (the CLI installs this).

  After a failed checkpoint save (a full disk), TensorStore's C++ callbacks can still report to the asyncio
  event loop that orbax has closed; each prints such a traceback through sys.excepthook, after the real
  error: noise, not a cause. Everything else reaches the previous hook.
  """
  previous = sys.excepthook

  def hook(kind, value, traceback):
    if not (isinstance(value, RuntimeError) and str(value) == 'Event loop is closed'):
      previous(kind, value, traceback)

  sys.excepthook = hook
