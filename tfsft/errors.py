"""Error taxonomy: user errors exit 2 with one clear message, internal errors exit 1."""

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
    """Bad input data. Messages name the file, line and field, and how to fix it."""

    def __init__(self, problems: list[str] | str, limit: int = 20):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
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
