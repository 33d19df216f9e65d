"""Item groups for the fairness metrics and the BiFair group losses, built from the training
split only.

Config block (every key optional; keys left out take these defaults)::

    item_group:
      by: popularity      # popularity | attribute | file
      n_groups: 5         # popularity only: number of groups K
      split: mass         # popularity only: mass (equal training interactions) | count (equal items)
      attribute: ~        # attribute only: a token / token_seq field of the .item file (load it in load_col)
      multi_value: first  # attribute only: first | priority, for items with several values
      priority: ~         # attribute only: [value, ...]; an item goes to its first value in this list
      missing: unknown    # attribute only: unknown (own group "unknown", last) | error
      file: ~             # file only: "item token<TAB>group name" lines; a relative path is tried
                          # as given, then inside the dataset folder; every item must be listed

Group ids: ``item_group[i]`` is the group of internal item id ``i``; the padding id 0 gets -1.
Groups are ordered by training interactions, group 0 first: for ``by: popularity`` group 0 is
the head (most popular) and group K-1 the tail; for attribute and file groups, group 0 is the
group with the most training interactions (ties by name) and "unknown" is always last.
"Training interactions" are the rows of the training split (for sequential models: the training
targets), the counts RecBole's own AveragePopularity / TailPercentage use.
"""
import logging
import os
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from recbole_bifair.config_values import config_value
from recbole_bifair.errors import BiFairInputError
from recbole_bifair.files import existing_path, open_text

DEFAULTS = {
    "by": "popularity",
    "n_groups": 5,
    "split": "mass",
    "attribute": None,
    "multi_value": "first",
    "priority": None,
    "missing": "unknown",
    "file": None,
}
KEYS_OF_MODE = {
    "popularity": {"n_groups", "split"},
    "attribute": {"attribute", "multi_value", "priority", "missing"},
    "file": {"file"},
}
UNKNOWN_GROUP = "unknown"
MIN_RELIABLE_POSITIVES = 30

_cache = weakref.WeakKeyDictionary()


@dataclass
class ItemGroups:
    """The item -> group table and per-group statistics.

    ``item_group``: LongTensor [n_items], group id per internal item id, -1 for padding.
    ``names``: group names, index = group id.
    ``train_counts``: training interactions per group; ``train_share`` = counts / total.
    ``n_items``: items per group. ``eval_positives``: {"valid"/"test": positives per group},
    filled when the evaluation datasets are given to :func:`build_item_groups`.
    """

    by: str
    item_group: torch.Tensor
    names: List[str]
    train_counts: torch.Tensor
    n_items: torch.Tensor
    description: str = ""
    eval_positives: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def train_share(self) -> torch.Tensor:
        total = self.train_counts.sum().clamp(min=1)
        return self.train_counts.double() / total

    def positives_in(self, dataset) -> torch.Tensor:
        """Positives per group in an evaluation split: distinct (user, item) pairs of its
        interactions, counted by the item's group."""
        pairs = np.unique(
            np.stack([dataset.inter_feat[dataset.uid_field].numpy(),
                      dataset.inter_feat[dataset.iid_field].numpy()]), axis=1)
        groups = self.item_group.numpy()[pairs[1]]
        return torch.from_numpy(np.bincount(groups[groups >= 0], minlength=self.n_groups))

    def summary(self) -> str:
        """A table: one line per group with items, training share and evaluation positives."""
        phases = list(self.eval_positives)
        header = ["group", "name", "items", "train share"] + [f"{p} positives" for p in phases]
        rows = [header]
        for g, name in enumerate(self.names):
            rows.append([f"g{g}", name, str(int(self.n_items[g])),
                         f"{100 * float(self.train_share[g]):.1f}%"]
                        + [str(int(self.eval_positives[p][g])) for p in phases])
        widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
        return f"Item groups ({self.description}), from the training split:\n" + "\n".join(lines)

    def sparse_group_warnings(self, phase: str, positives: torch.Tensor) -> List[str]:
        """Warnings for groups without positives in ``phase`` and for groups with fewer than
        MIN_RELIABLE_POSITIVES (30) positives."""
        counts = [int(c) for c in positives]
        empty = [f"g{g} {self.names[g]}" for g, c in enumerate(counts) if c == 0]
        sparse = [f"g{g} {self.names[g]} ({c})" for g, c in enumerate(counts)
                  if 0 < c < MIN_RELIABLE_POSITIVES]
        messages = []
        if empty:
            messages.append(
                f"item groups without {phase} positives: {', '.join(empty)}; their per-group "
                f"metrics are NaN and they are left out of gap / worst / CV / worst-quarter.")
        if sparse:
            messages.append(
                f"item groups with fewer than {MIN_RELIABLE_POSITIVES} {phase} positives: "
                f"{', '.join(sparse)}; their per-group metrics are noisy.")
        return messages


def item_group_config(config) -> dict:
    """The ``item_group`` block with defaults filled in, validated (BiFairInputError)."""
    given = config_value(config, "item_group")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise BiFairInputError(
            f"item_group must be a mapping such as {{by: popularity, n_groups: 5}}, got {given!r}.")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise BiFairInputError(
            f"Unknown item_group key(s) {unknown}: the keys are {sorted(DEFAULTS)}.")
    block = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    by = block["by"]
    if by not in KEYS_OF_MODE:
        raise BiFairInputError(
            f"item_group.by is {by!r}: use one of {sorted(KEYS_OF_MODE)}.")
    for key in sorted(set(given) - KEYS_OF_MODE[by] - {"by"}):
        if given[key] is not None:
            raise BiFairInputError(
                f"item_group.{key} is set but item_group.by is {by!r}: {key} applies to by: "
                f"{_mode_of_key(key)} only; change `by` or remove {key}.")
    _validate_mode_values(block, given)
    return block


def _mode_of_key(key):
    return next(mode for mode, keys in KEYS_OF_MODE.items() if key in keys)


def _validate_mode_values(block, given):
    by = block["by"]
    if by == "popularity":
        k = block["n_groups"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise BiFairInputError(
                f"item_group.n_groups must be a positive integer, got {k!r}.")
        if block["split"] not in ("mass", "count"):
            raise BiFairInputError(
                f"item_group.split is {block['split']!r}: use mass (equal training interactions "
                f"per group) or count (equal numbers of items).")
    elif by == "attribute":
        if not block["attribute"]:
            raise BiFairInputError(
                "item_group.by is attribute but item_group.attribute is not set: name a token or "
                "token_seq field of the .item file, e.g. attribute: class.")
        if "multi_value" not in given and block["priority"] is not None:
            block["multi_value"] = "priority"
        if block["multi_value"] not in ("first", "priority"):
            raise BiFairInputError(
                f"item_group.multi_value is {block['multi_value']!r}: use first or priority.")
        priority = block["priority"]
        if block["multi_value"] == "priority":
            if not isinstance(priority, (list, tuple)) or not priority:
                raise BiFairInputError(
                    "item_group.multi_value is priority: give item_group.priority as a non-empty "
                    "list of attribute values, e.g. priority: [Documentary, Horror, Drama].")
        elif priority is not None:
            raise BiFairInputError(
                "item_group.priority is set but item_group.multi_value is first: remove one of them.")
        if block["missing"] not in ("unknown", "error"):
            raise BiFairInputError(
                f"item_group.missing is {block['missing']!r}: use unknown (a group of its own) or error.")
    elif not block["file"]:
        raise BiFairInputError(
            "item_group.by is file but item_group.file is not set: give a text file with "
            "'item token<TAB>group name' lines.")


def build_item_groups(config, dataset, valid_dataset=None, test_dataset=None) -> ItemGroups:
    """Item groups from ``dataset``, the TRAINING split (``train_data.dataset``).

    The result is cached per training dataset and config block, and logged once when built.
    ``valid_dataset`` / ``test_dataset`` (``valid_data.dataset``, ``test_data.dataset``) are
    optional: given, their positives per group are added to ``eval_positives`` and logged,
    with a warning for every group with fewer than 30 positives.
    """
    block = item_group_config(config)
    signature = repr(sorted(block.items()))
    cached = _cached_groups(dataset)
    if cached is not None and cached[0] == signature:
        groups = cached[1]
        newly_counted = _count_eval_positives(groups, valid_dataset, test_dataset)
        if newly_counted:
            _log_groups(groups, newly_counted)
        return groups
    groups = _build(block, config, dataset)
    _count_eval_positives(groups, valid_dataset, test_dataset)
    _remember_groups(dataset, signature, groups)
    _log_groups(groups, list(groups.eval_positives))
    return groups


def _cached_groups(dataset):
    try:
        return _cache.get(dataset)
    except TypeError:
        return None


def _remember_groups(dataset, signature, groups):
    try:
        _cache[dataset] = (signature, groups)
    except TypeError:
        pass


def _count_eval_positives(groups, valid_dataset, test_dataset):
    counted = []
    for phase, eval_dataset in (("valid", valid_dataset), ("test", test_dataset)):
        if eval_dataset is not None and phase not in groups.eval_positives:
            groups.eval_positives[phase] = groups.positives_in(eval_dataset)
            counted.append(phase)
    return counted


def _log_groups(groups, phases):
    logger = logging.getLogger()
    logger.info(groups.summary())
    for phase in phases:
        for message in groups.sparse_group_warnings(phase, groups.eval_positives[phase]):
            logger.warning(message)


def _build(block, config, dataset) -> ItemGroups:
    counts = training_item_counts(dataset)
    if block["by"] == "popularity":
        item_group = popularity_groups(counts, block["n_groups"], block["split"])
        names = popularity_group_names(block["n_groups"])
        description = (f"by popularity, {block['n_groups']} groups of equal "
                       f"{'training interactions' if block['split'] == 'mass' else 'item counts'}; "
                       f"g0 = head (most popular), g{block['n_groups'] - 1} = tail")
    else:
        if block["by"] == "attribute":
            labels = attribute_labels(dataset, block)
            description = f"by item attribute {block['attribute']!r}, {block['multi_value']} value"
        else:
            path = existing_path(block["file"], config_value(config, "data_path"), "item_group.file")
            labels = file_labels(dataset, path)
            description = f"from file {os.path.basename(block['file'])}"
        item_group, names = groups_from_labels(labels, counts)
    item_group = torch.as_tensor(item_group, dtype=torch.long)
    n_groups = len(names)
    member = item_group >= 0
    return ItemGroups(
        by=block["by"],
        item_group=item_group,
        names=names,
        train_counts=torch.bincount(item_group[member], weights=torch.as_tensor(counts)[member].double(),
                                    minlength=n_groups).long(),
        n_items=torch.bincount(item_group[member], minlength=n_groups),
        description=description,
    )


def training_item_counts(dataset) -> np.ndarray:
    """Training interactions per internal item id (the training split's item column; for
    sequential datasets these are the training targets, like RecBole's ``item_counter``)."""
    items = dataset.inter_feat[dataset.iid_field].numpy()
    return np.bincount(items, minlength=dataset.item_num).astype(np.int64)


def popularity_groups(counts: np.ndarray, n_groups: int, split: str) -> np.ndarray:
    """Group per item id by training popularity; index 0 (padding) gets -1.

    Items seen in training are ranked by count (descending), ties by internal id (ascending).
    ``mass``: item at rank r goes to group floor(K * M_r / M), M_r = interactions of the items
    ranked before it, M = all training interactions (each group holds ~1/K of the mass).
    ``count``: item at rank r of n seen items goes to group floor(K * r / n).
    Every group keeps at least one seen item (boundaries are moved where needed); items unseen
    in training join the tail group K-1.
    """
    n_items = len(counts)
    ids = np.arange(1, n_items)
    seen = ids[counts[1:] > 0]
    if n_groups > len(seen):
        raise BiFairInputError(
            f"item_group.n_groups is {n_groups} but only {len(seen)} items occur in the training "
            f"split: use at most {len(seen)} groups.")
    ranked = seen[np.lexsort((seen, -counts[seen]))]
    if split == "mass":
        mass_before = np.cumsum(counts[ranked]) - counts[ranked]
        thresholds = counts.sum() * np.arange(1, n_groups) / n_groups
        starts = np.searchsorted(mass_before, thresholds, side="left")
    else:
        starts = np.ceil(len(ranked) * np.arange(1, n_groups) / n_groups).astype(np.int64)
    starts = _non_empty_starts(starts, len(ranked), n_groups)
    item_group = np.full(n_items, n_groups - 1, dtype=np.int64)
    item_group[0] = -1
    item_group[ranked] = np.searchsorted(starts, np.arange(len(ranked)), side="right")
    return item_group


def _non_empty_starts(starts: np.ndarray, n_ranked: int, n_groups: int) -> np.ndarray:
    """Start ranks of groups 1..K-1, moved so that every group holds at least one item."""
    starts = np.array(starts, dtype=np.int64)
    for g in range(len(starts)):
        low = (starts[g - 1] if g else 0) + 1
        high = n_ranked - (n_groups - 1 - g)
        starts[g] = min(max(starts[g], low), high)
    return starts


def popularity_group_names(n_groups: int) -> List[str]:
    """head, mid1, ..., tail (a single group is "all")."""
    if n_groups == 1:
        return ["all"]
    return ["head"] + [f"mid{g}" for g in range(1, n_groups - 1)] + ["tail"]


def attribute_labels(dataset, block) -> List[Optional[str]]:
    """One label per item id (None for padding and for items without a usable value)."""
    attribute = block["attribute"]
    _check_attribute(dataset, attribute)
    tokens = dataset.field2id_token[attribute]
    values = _item_field_token_ids(dataset, attribute)
    if block["multi_value"] == "priority":
        priority = [str(v) for v in block["priority"]]
        unknown = sorted(set(priority) - set(map(str, tokens[1:])))
        if unknown:
            raise BiFairInputError(
                f"item_group.priority has value(s) {unknown} that item attribute {attribute!r} "
                f"never takes; its values are {sorted(map(str, tokens[1:]))}.")
        rank = {v: r for r, v in enumerate(priority)}
        choose = lambda names: min((n for n in names if n in rank), key=rank.get, default=None)
    else:
        choose = lambda names: names[0] if names else None
    labels = [None] + [choose([str(tokens[t]) for t in ids if t > 0]) for ids in values[1:]]
    missing = [i for i in range(1, len(labels)) if labels[i] is None]
    if missing:
        if block["missing"] == "error":
            examples = [str(dataset.id2token(dataset.iid_field, i)) for i in missing[:5]]
            rule = " in item_group.priority" if block["multi_value"] == "priority" else ""
            raise BiFairInputError(
                f"{len(missing)} item(s) have no value of attribute {attribute!r}{rule} "
                f"(e.g. {examples}): fill them in, or set item_group.missing: unknown.")
        for i in missing:
            labels[i] = UNKNOWN_GROUP
    return labels


def _check_attribute(dataset, attribute):
    from recbole.utils import FeatureType

    item_feat = dataset.item_feat
    token_types = (FeatureType.TOKEN, FeatureType.TOKEN_SEQ)
    loaded = [] if item_feat is None else [
        f for f in item_feat.columns if f != dataset.iid_field and dataset.field2type.get(f) in token_types]
    if item_feat is None or attribute not in item_feat.columns:
        raise BiFairInputError(
            f"item_group.attribute {attribute!r} is not a loaded item field (loaded token fields: "
            f"{loaded}): check the name and load it, e.g. load_col: {{inter: [...], item: "
            f"[{dataset.iid_field}, {attribute}]}}.")
    if dataset.field2type[attribute] not in token_types:
        raise BiFairInputError(
            f"item_group.attribute {attribute!r} is a {dataset.field2type[attribute].value} field: "
            f"use a token or token_seq item field ({loaded}).")


def _item_field_token_ids(dataset, attribute) -> List[List[int]]:
    """Token ids of ``attribute`` per internal item id, in the order listed in the .item file."""
    item_feat = dataset.item_feat
    rows = item_feat[dataset.iid_field]
    column = item_feat[attribute]
    rows = rows.tolist() if hasattr(rows, "tolist") else list(rows)
    values = [[] for _ in range(dataset.item_num)]
    for item_id, value in zip(rows, column.tolist() if hasattr(column, "tolist") else column):
        values[int(item_id)] = [int(v) for v in np.atleast_1d(value)]
    return values


def file_labels(dataset, path) -> List[Optional[str]]:
    """One group name per item id from a ``token<TAB>group`` file (a header line whose fields
    contain ':' like RecBole's atomic files is skipped; tokens absent from the dataset are ignored)."""
    token_to_group = _read_group_file(path)
    tokens = dataset.field2id_token[dataset.iid_field]
    labels = [None] + [token_to_group.get(str(t)) for t in tokens[1:]]
    missing = [str(tokens[i]) for i in range(1, len(labels)) if labels[i] is None]
    if missing:
        raise BiFairInputError(
            f"item_group.file {path} has no group for {len(missing)} of the dataset's "
            f"{len(labels) - 1} items (e.g. {missing[:5]}): add a line 'token<TAB>group' for each.")
    return labels


def _read_group_file(path) -> Dict[str, str]:
    mapping = {}
    with open_text(path) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if number == 1 and len(fields) == 2 and all(":" in x for x in fields):
            continue
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise BiFairInputError(
                f"item_group.file {path}, line {number}: expected 'item token<TAB>group name', "
                f"got {line!r}.")
        token, group = fields[0].strip(), fields[1].strip()
        if mapping.get(token, group) != group:
            raise BiFairInputError(
                f"item_group.file {path}: item {token!r} is given two groups "
                f"({mapping[token]!r} and {group!r}); keep one line per item.")
        mapping[token] = group
    return mapping


def groups_from_labels(labels: List[Optional[str]], counts: np.ndarray):
    """Group ids from per-item labels: groups ordered by training interactions (descending),
    ties by name, "unknown" last. Returns (item_group array, names)."""
    totals = {}
    for label, count in zip(labels, counts):
        if label is not None:
            totals[label] = totals.get(label, 0) + int(count)
    names = sorted(totals, key=lambda n: (n == UNKNOWN_GROUP, -totals[n], n))
    index = {name: g for g, name in enumerate(names)}
    item_group = np.array([-1 if label is None else index[label] for label in labels], dtype=np.int64)
    return item_group, names
