"""Typed reads of config values: each bad value is one ``BiFairInputError`` naming the key; and
the plain string parsing of settings given as text (``--key=value`` options, values in a
``config_dict``), which the plugin's ``Config`` and the command-line entry points share."""
import ast
import re

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
    unknown = [arg for arg in args if not arg.startswith("--") or "=" not in arg]
    if unknown:
        raise BiFairInputError(f"unknown argument '{unknown[0]}'; settings are given as --key=value.")
    return {key: literal_value(value) for key, value in command_line_options(args).items()}


def literal_value(text):
    """A config string as the value it spells: a Python literal (number, list, dict, tuple,
    ``None``, ``True``), ``true``/``false`` in any case, a list of bare names
    (``[NDCG,Recall]``, as typed on a command line), or else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    bare_list = re.fullmatch(r"\[\s*([\w.@-]+(?:\s*,\s*[\w.@-]+)*)?\s*,?\s*\]", text)
    if bare_list:
        return [literal_value(item.strip()) for item in (bare_list.group(1) or "").split(",") if item.strip()]
    return text


def command_line_options(argv):
    """The ``--key=value`` options of ``argv`` as strings (other arguments are the entry
    point's own: ``--model SASRec``, ``-m``). The value is everything after the first ``=``
    (``--checkpoint_dir=runs/lr=0.01``); an option without a key, or a key given twice with
    different values, is an error."""
    options = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            continue
        key, _, value = arg[2:].partition("=")
        if not key:
            raise BiFairInputError(f"malformed option '{arg}': give settings as --key=value.")
        if key in options and options[key] != value:
            raise BiFairInputError(f"--{key} is given twice ({options[key]} and {value}); give it once.")
        options[key] = value
    return options
