"""The one exception type for configuration mistakes a user can make."""


class ConfigError(ValueError):
    """A flag, a DeepSpeed JSON value or a combination of them that cannot work.

    Subclasses ValueError so callers that catch ValueError keep working; the message always names the
    offending values and how to fix them.
    """
