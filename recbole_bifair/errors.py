"""The one exception type for bad user input. The command line prints its message alone
(no traceback); every message says what is wrong and what to do."""


class BiFairInputError(ValueError):
    """A missing dataset, a wrong or short embedding file, a bad config value, an unknown
    model name, an encoder that cannot be loaded offline, ..."""
