"""Typed reads of config values: each bad value is one ``BiFairInputError`` naming the key."""
from recbole_bifair.errors import BiFairInputError


def config_value(config, key, default=None):
    """``config[key]`` for a RecBole Config or a dict; ``default`` when missing or None."""
    try:
        value = config[key]
    except KeyError:
        value = None
    return default if value is None else value


def choice(config, key, allowed):
    """``config[key]`` (default: the first allowed value), which must be one of ``allowed``."""
    value = config[key]
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise BiFairInputError(f"{key} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def flag(config, key, default=False):
    """``config[key]`` as a boolean (``default`` when it is unset)."""
    value = config[key]
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BiFairInputError(f"{key} must be True or False; got {value!r}.")
    return value


def positive_int(config, key, default=None):
    """``config[key]`` as an integer >= 1 (``default`` when it is unset)."""
    value = config[key]
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BiFairInputError(f"{key} must be a positive integer; got {value!r}.")
    return value


def non_negative_int(config, key, default=0):
    """``config[key]`` as an integer >= 0 (``default`` when it is unset)."""
    value = config[key]
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BiFairInputError(f"{key} must be an integer >= 0; got {value!r}.")
    return value


def number(config, key, minimum=None, default=None, strictly_above=False):
    """``config[key]`` as a float, at least ``minimum`` (above it if ``strictly_above``)."""
    value = config[key]
    if value is None and default is not None:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BiFairInputError(f"{key} must be a number; got {value!r}.")
    if minimum is not None and (value < minimum or (strictly_above and value == minimum)):
        relation = ">" if strictly_above else ">="
        raise BiFairInputError(f"{key} must be {relation} {minimum}; got {value!r}.")
    return float(value)


def command_line_settings(args):
    """``["--epochs=2", "--load_col=None"]`` -> ``{"epochs": 2, "load_col": None}``: values read
    the way the plugin's ``Config`` reads ``--key=value`` on its command line."""
    from recbole_bifair.config import command_line_options, literal_value

    unknown = [arg for arg in args if not arg.startswith("--") or "=" not in arg]
    if unknown:
        raise BiFairInputError(f"unknown argument '{unknown[0]}'; settings are given as --key=value.")
    return {key: literal_value(value) for key, value in command_line_options(args).items()}
