"""Errors a user can fix. Each carries a one-line message that names the key/file and the fix;
the entrypoint prints it without a traceback."""


class RagqaError(Exception):
    """Bad input or environment: printed as one line, exit status 2 (a sweep records it and goes on)."""


class ConfigError(RagqaError):
    pass


class DataError(RagqaError):
    pass


class DependencyError(RagqaError):
    pass


class ResourceError(RagqaError):
    """No GPU for a GPU-only method, out of memory, ..."""
