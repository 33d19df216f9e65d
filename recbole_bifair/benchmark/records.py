"""The JSON files of the harness and its run processes: run records and run outcomes, written
atomically, read back as None when missing or unreadable."""
import json
import os
import re

import numpy as np

from recbole_bifair.files import write_text_atomically


# Digits of a metric value: kept of each user's NDCG in a record, shown in the tables.
METRIC_DIGITS = 4


def _read_json(path):
    """The JSON data in ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (indented, with
    each list of numbers on one line, so that a record's per-user values stay compact)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomically(path, json_text(data))


# A list of numbers as json.dumps(indent=2) writes it: one element a line. A string never holds a
# raw line break (JSON escapes it), so the pattern matches structure only.
_NUMBER = r"-?\d[\d.eE+-]*"
_NUMBER_LIST = re.compile(rf"\[\n\s*({_NUMBER}(?:,\n\s*{_NUMBER})*)\n\s*\]")


def json_text(data):
    """``data`` as indented JSON, lists of numbers on one line each."""
    text = json.dumps(data, indent=2, default=_json_default)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\n\s*", m.group(1))) + "]", text)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
