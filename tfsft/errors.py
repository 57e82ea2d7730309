"""Error taxonomy and exit codes of the CLI.

0  success
1  internal error: any exception that is not a `UserError` (a bug in tfsft or a library);
   the CLI prints the traceback and asks for a report
2  user error (`ConfigError`, `DataError`, `PluginError`, `RunDirError`): one message that
   names the file/key and the fix, no traceback (`--debug` shows it)
3  `TrainingError`: training itself failed on something the user can act on (diverged
   loss, out of memory, checkpoint not writable)
130 interrupted (Ctrl-C or SIGTERM); the run's manifest says `interrupted`; during training
    a checkpoint is saved first and the same command resumes from it
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (config, data, missing file or package). Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """One or more configuration problems, all reported together."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = "1 configuration error" if n == 1 else f"{n} configuration errors"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class DataError(UserError):
    """Bad input data. Messages name the file, line and field, and how to fix it.

    `rows`: indices of the offending rows when every problem belongs to a row, so that
    `data.on_error: skip` can drop exactly those rows; None for problems of the whole file
    or dataset, which are never skipped.
    """

    def __init__(self, problems: list[str] | str, limit: int = 20,
                 rows: list[int] | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.rows = None if rows is None else sorted(set(rows))
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        text = "\n".join(f"  - {p}" for p in shown)
        if more:
            text += f"\n  ... and {more} more"
        n = len(self.problems)
        head = "1 data error" if n == 1 else f"{n} data errors"
        super().__init__(head + ":\n" + text)


class PluginError(UserError):
    """A task plugin that cannot be loaded or breaks the contract."""


class RunDirError(UserError):
    """A run directory that is missing, incomplete, or would be overwritten."""


class TrainingError(UserError):
    """Training stopped on a problem the user can act on: the loss diverged (NaN/Inf), memory
    ran out, a checkpoint could not be written. Exit code 3, so scripts and the tuner can
    tell a failed training from bad input."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or a preempted VM stopping us): unwound like Ctrl-C, so the run's
    manifest is marked `interrupted` and its lock released; during training a resume
    checkpoint is written first."""
