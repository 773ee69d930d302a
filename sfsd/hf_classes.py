"""Placeholder, replaced by the engine."""


def register_all() -> None:
    return None
