"""User-facing errors that several layers raise (data errors are :mod:`.batch`'s)."""


class ConfigError(ValueError):
    """A configuration file, override or setting that cannot be used; the message names the
    field and what to do."""
