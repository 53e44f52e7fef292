"""Subcommands of `inceptionlab` (placeholder: filled in by its issue)."""


def register(subparsers) -> None:
    pass
