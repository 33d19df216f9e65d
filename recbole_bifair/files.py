"""Files: finding and opening the user's input files (each problem is one ``BiFairInputError``),
and writing files atomically (a temporary file, synced, then renamed over the old one).
"""
import codecs
import contextlib
import os
import uuid

from recbole_bifair.errors import BiFairInputError


def existing_path(value, data_path, key):
    """``value`` as given (absolute or relative to the working folder), else inside the dataset
    folder ``data_path``; a missing file is an error naming ``key``."""
    path = os.path.expanduser(str(value))
    candidates = [path] if os.path.isabs(path) else [os.path.abspath(path)]
    if data_path and not os.path.isabs(path):
        candidates.append(os.path.join(data_path, path))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise BiFairInputError(
        f"{key} {value!r} not found (looked for {' and '.join(candidates)}). Give the path of an "
        "existing file, absolute or relative to the working folder or the dataset folder."
    )


@contextlib.contextmanager
def open_text(path, encoding="utf-8", encoding_key=None):
    """``open(path, encoding=encoding)``; an unknown encoding, or bytes that are not text in it,
    is one error naming the file (and ``encoding_key``, the config key that sets the encoding)."""
    setting = f" (config key {encoding_key})" if encoding_key else ""
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise BiFairInputError(
            f"Cannot read {path}: unknown encoding {encoding!r}{setting}. Use a Python codec name "
            "such as utf-8.") from None
    try:
        with open(path, encoding=encoding) as f:
            yield f
    except UnicodeDecodeError as error:
        hint = f", or set {encoding_key} to the encoding it is in" if encoding_key else ""
        raise BiFairInputError(
            f"{path} must be {encoding} text, but it is not ({error.reason} at byte {error.start}). "
            f"Save it as {encoding}{hint}.") from None


def write_text_atomically(path, text, encoding="utf-8"):
    """Writes ``text`` to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path, "w", encoding) as f:
        f.write(text)


def save_atomically(obj, path, *args, **kwargs):
    """``torch.save(obj, path, ...)`` through :func:`replaced_atomically`: a run killed while
    saving leaves the previous checkpoint whole."""
    import torch

    with replaced_atomically(path, "wb") as f:
        torch.save(obj, f, *args, **kwargs)


@contextlib.contextmanager
def replaced_atomically(path, mode="w", encoding=None):
    """Yields a file open on a temporary file next to ``path``; when the block ends it is
    synced and renamed over ``path``, so a reader sees the old file or the whole new one,
    never a part. On an error the temporary file is removed and ``path`` left as it was; the
    temporary files of ``path`` that killed processes of this machine left behind are removed
    first (a temporary file is named after its machine and process, so a running writer's is
    never touched)."""
    directory, name = os.path.split(os.path.abspath(path))
    remove_stale_temporaries(directory, name)
    temporary = os.path.join(directory, f".{name}.{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _host_tag():
    """This machine's name, safe inside a file name (PIDs mean something on one machine only)."""
    import socket

    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname()) or "host"


def remove_stale_temporaries(directory, name):
    """Remove ``.<name>.<host>.<pid>.<hex>.tmp`` files in ``directory`` written by processes of
    this machine that are gone."""
    prefix = f".{name}.{_host_tag()}."
    try:
        candidates = [entry for entry in os.listdir(directory) if entry.startswith(prefix) and entry.endswith(".tmp")]
    except OSError:
        return
    for entry in candidates:
        pid = entry[len(prefix):].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, entry))


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: another user's process, alive
        return True
    return True


def properties_dir():
    """The folder of the plugin's YAML files: ``recbole_bifair/properties`` once installed,
    the repository's top-level ``properties/`` in a checkout."""
    installed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")
    if os.path.isdir(installed):
        return installed
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "properties")
    if os.path.isdir(checkout):
        return checkout
    raise FileNotFoundError(
        "recbole_bifair's properties/ folder is missing: reinstall the package with `pip install .`"
    )


def _yaml_loader():
    """A safe YAML loader that reads ``1e-3`` as a number, as RecBole's ``Config`` does."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def read_properties(*parts):
    """The settings of one of the plugin's YAML files, e.g. ``read_properties("model",
    "BiFair.yaml")``: where the defaults of its keys are written (and read from)."""
    import yaml

    with open(os.path.join(properties_dir(), *parts), encoding="utf-8") as f:
        return yaml.load(f.read(), Loader=_yaml_loader()) or {}
