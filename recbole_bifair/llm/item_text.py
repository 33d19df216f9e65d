"""The text of each item, rendered from the dataset's ``.item`` fields for the encoder.

Fields come from ``dataset.item_feat`` when the ``.item`` fields were loaded (``load_col``),
else straight from ``<data_path>/<dataset>.item``. Values are the original tokens: a ``token_seq``
field is its tokens joined with spaces, a ``float`` field is its number (``1995``, ``3.5``).

- Default (``llm_text_template: ~``): every ``token`` / ``token_seq`` field except the item id,
  as ``field: value`` pairs joined with ``"; "``, empty fields left out, e.g.
  ``movie_title: Toy Story; release_year: 1995; class: Animation Children's Comedy``.
- ``llm_text_template``: a Python format string over the ``.item`` field names, e.g.
  ``"{movie_title} ({release_year}). Genres: {class}"``.
- An item without text (no ``.item`` row, or every field it uses empty) is encoded as its item
  token, and counted in a warning.
"""
import os
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recbole_bifair.errors import BiFairInputError
from recbole_bifair.llm.vector_files import atomic_format

TEXT_TYPES = ("token", "token_seq")


@dataclass
class ItemTexts:
    """``texts[i]`` is the text of internal item id ``i + 1``; ``untexted`` lists the tokens of
    items that got their token as fallback text."""

    texts: list
    untexted: list
    origin: str


def item_texts(config, dataset, template=None):
    """The encoder input of every item except padding, in internal-id order."""
    iid_field = config["ITEM_ID_FIELD"]
    fields, rows, origin = item_fields(config, dataset)
    used_fields = template_fields(template, fields) if template else default_text_fields(fields, iid_field)
    item_tokens = [str(token) for token in dataset.field2id_token[iid_field][1:]]
    if not used_fields or not rows:
        raise BiFairInputError(
            f"No item text to encode: {origin} has no text (token or token_seq) fields. Add a "
            f"{config['dataset']}.item file with text fields, or give precomputed vectors in llm_emb_file."
        )
    texts, untexted = [], []
    for token in item_tokens:
        row = rows.get(token, {})
        if any(row.get(field) for field in used_fields):
            texts.append(render(template, row, fields, used_fields))
        else:
            texts.append(token)
            untexted.append(token)
    if len(untexted) == len(item_tokens):
        raise BiFairInputError(
            f"No item of the dataset has text in {origin} (fields {', '.join(used_fields)}). Check that "
            f"its {iid_field} tokens match the .inter file, or give precomputed vectors in llm_emb_file."
        )
    return ItemTexts(texts, untexted, origin)


def default_text_fields(fields, iid_field):
    """Every token / token_seq field except the item id."""
    return [field for field, field_type in fields.items() if field_type in TEXT_TYPES and field != iid_field]


def template_fields(template, fields):
    """The field names ``template`` uses; unknown names and malformed templates are errors."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise BiFairInputError(f"llm_text_template {template!r} is not a valid format string: {error}.") from None
    used = []
    for name in names:
        field = name.split(".")[0].split("[")[0]
        if field not in fields:
            raise BiFairInputError(
                f"llm_text_template {template!r} uses {{{name}}}, but the item fields are: "
                f"{', '.join(fields)}. Name fields as {{field_name}}."
            )
        if field not in used:
            used.append(field)
    return used


def render(template, row, fields, used_fields):
    """One item's text: the template filled with its field values, or the default form."""
    if template is None:
        return "; ".join(f"{field}: {row[field]}" for field in used_fields if row.get(field))
    try:
        return template.format_map({field: row.get(field, "") for field in fields})
    except (ValueError, KeyError, IndexError, AttributeError) as error:
        raise BiFairInputError(f"llm_text_template {template!r} cannot be filled: {error!r}.") from None


def item_fields(config, dataset):
    """``({field: type}, {item token: {field: text}}, origin)`` from the loaded item features
    when they hold more than the item id, else from the ``.item`` file."""
    if dataset.item_feat is not None and len(dataset.item_feat.columns) > 1:
        return fields_from_item_feat(config, dataset)
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if os.path.isfile(path):
        return fields_from_item_file(config, path)
    return {}, {}, f"the dataset (no item features are loaded and {path} does not exist)"


def fields_from_item_feat(config, dataset):
    """Field texts from ``dataset.item_feat`` (a DataFrame before ``build()``, an Interaction after)."""
    iid_field = config["ITEM_ID_FIELD"]
    feat = dataset.item_feat
    columns = list(feat.columns)
    fields = {field: dataset.field2type[field].value for field in columns}
    item_tokens = dataset.field2id_token[iid_field]
    values = {field: column_values(feat[field]) for field in columns}
    rows = {}
    for index, item_id in enumerate(values[iid_field]):
        if int(item_id) == 0:
            continue
        rows[str(item_tokens[int(item_id)])] = {
            field: value_text(dataset, field, fields[field], values[field][index]) for field in columns
        }
    return fields, rows, "the loaded item features (dataset.item_feat)"


def column_values(column):
    """A feature column as a list of per-item values (tensor or pandas Series)."""
    return column.tolist() if hasattr(column, "tolist") else list(column)


def value_text(dataset, field, field_type, value):
    """The original text of one loaded feature value."""
    flat = np.ravel(np.asarray(value, dtype=np.float64))
    if field_type in TEXT_TYPES:
        id2token = dataset.field2id_token[field]
        ids = [int(v) for v in flat if not np.isnan(v) and int(v) != 0]
        return " ".join(str(id2token[i]) for i in ids)
    numbers = [v for v in flat if not np.isnan(v)]
    if field_type == "float":
        numbers = numbers[:1]
    return " ".join(np.format_float_positional(number, trim="-") for number in numbers)


def fields_from_item_file(config, path):
    """Field texts read from a RecBole ``.item`` atomic file (the same parsing rules as RecBole)."""
    atomic = atomic_format(config)
    try:
        frame = pd.read_csv(
            path, delimiter=atomic["field_separator"], dtype=str, keep_default_na=False,
            encoding=atomic["encoding"], engine="python",
        )
        fields = dict(column.split(":", 1) for column in frame.columns)
    except ValueError as error:
        raise BiFairInputError(
            f"Cannot read the item text file {path}: {error}. It must be a RecBole atomic file."
        ) from None
    frame.columns = list(fields)
    iid_field = config["ITEM_ID_FIELD"]
    if iid_field not in fields:
        raise BiFairInputError(
            f"The item text file {path} has no {iid_field} column, so its rows cannot be matched to "
            f"items; add a '{iid_field}:token' column (ITEM_ID_FIELD), or give precomputed vectors in llm_emb_file."
        )
    for field, field_type in fields.items():
        if field_type.endswith("seq"):
            frame[field] = [" ".join(filter(None, value.split(atomic["seq_separator"]))) for value in frame[field]]
    rows = {row[iid_field]: row for row in frame.to_dict("records")}
    return fields, rows, path
