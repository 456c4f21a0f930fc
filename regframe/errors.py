"""Exceptions raised for bad user input. Messages always name the offending file or key."""


class RegframeInputError(ValueError):
    """Bad input data or configuration (missing file, wrong shape, NaNs, unknown key, ...)."""
