"""The one exception type for bad user input. The command line prints its message alone
(no traceback); every message says what is wrong and what to do."""


class BiFairInputError(ValueError):
    """A missing dataset, a wrong or short embedding file, a bad config value, an unknown
    model name, an encoder that cannot be loaded offline, ..."""


BAD_INPUT_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


def exit_code_of(main, *args, **kwargs):
    """``main(...)``'s own exit code (None counts as 0), or, for the command lines: a
    ``BiFairInputError`` printed as one ``error:`` line with exit code 2, and Ctrl-C as one
    line with exit code 130, neither with a traceback."""
    import sys

    try:
        return main(*args, **kwargs) or 0
    except BiFairInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted: stopped by the user (the last saved checkpoint, if any, is whole).", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
