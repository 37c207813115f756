"""Cairn: the supervisor daemon of a self-running inference cluster."""

__version__ = "0.1.0"
