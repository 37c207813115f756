"""Exceptions raised by the integration-test harness."""


class HarnessError(Exception):
    """A test node or cluster could not be set up, reached or torn down."""


class HarnessUnavailable(HarnessError):
    """The host cannot run harness nodes (not root, or a tool is missing)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while clusters were live; raised so teardown runs."""
