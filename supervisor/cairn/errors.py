"""The one root exception of Cairn and its direct descendants."""


class CairnError(Exception):
    """Root of every error Cairn raises on purpose."""


class ConfigError(CairnError):
    """The configuration is invalid; the message names the key path."""

    def __init__(self, path: str, problem: str, source: str = "") -> None:
        self.path = path
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config error at {path}: {problem}")


class StateError(CairnError):
    """The state file cannot be used as it is (damaged, or from a newer Cairn); names the file."""
