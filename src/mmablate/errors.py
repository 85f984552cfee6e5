"""Errors with a message a user can act on: each names the file and the key or line at fault."""


class MMAblateError(Exception):
    """Base class; the CLI prints these without a traceback and exits 2."""


class ConfigError(MMAblateError):
    pass


class DataError(MMAblateError):
    pass


class CheckpointError(MMAblateError):
    pass
