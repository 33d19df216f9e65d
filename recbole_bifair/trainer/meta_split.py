"""The meta split of BiFair's outer level [ours]: each user's last training example, held out of
the inner level's training and served to the outer objective in batches (``meta_split:
last_train_item``). The valid and test splits are never touched.

Learning-to-reweight methods (Ren et al., 2018; Meta-Weight-Net; AutoDebias) measure their
outer objective on such a held-out meta set, so the outer level learns what generalises rather
than what the inner level already fits.
"""
import numpy as np
import torch


class MetaSplit:
    """The held-out rows of a training loader ``train_data`` (a RecBole ``TrainDataLoader``).

    A user's last training example is the row with the latest time (ties: the last row) among
    that user's rows; users with a single training row keep it. ``training_rows(batch)`` drops
    the held-out rows from a training batch, recognised by their (user, item) pair (a user's
    other rows of the same item go with them); ``next_batch()`` gives the next
    ``batch_size`` held-out rows, collated as the loader collates (negatives, transforms), in an
    order drawn from a generator seeded with ``seed`` (saved with ``state_dict``)."""

    def __init__(self, train_data, batch_size, seed, device):
        dataset = train_data._dataset
        self._collate = train_data.collate_fn
        self._uid, self._iid = dataset.uid_field, dataset.iid_field
        self._n_items = int(dataset.item_num)
        self.indices = torch.as_tensor(last_rows_per_user(dataset), dtype=torch.long)
        rows = dataset.inter_feat[self.indices]
        self._held_out_keys = self._keys(rows[self._uid], rows[self._iid]).to(device)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._order, self._position = None, 0

    def __len__(self):
        return len(self.indices)

    def _keys(self, users, items):
        return users.long() * self._n_items + items.long()

    def training_rows(self, interaction):
        """``interaction`` without its held-out rows."""
        keys = self._keys(interaction[self._uid], interaction[self._iid])
        kept = ~torch.isin(keys, self._held_out_keys.to(keys.device))
        return interaction if bool(kept.all()) else interaction[kept]

    def next_batch(self):
        """The next batch of held-out rows (a new random order after each pass)."""
        if self._order is None or self._position >= len(self._order):
            self._order, self._position = torch.randperm(len(self.indices), generator=self.generator), 0
        chosen = self._order[self._position: self._position + self.batch_size]
        self._position += len(chosen)
        return self._collate(self.indices[chosen])

    def state_dict(self):
        return {"generator": self.generator.get_state(), "order": self._order, "position": self._position}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self._order, self._position = state["order"], state["position"]


def last_rows_per_user(dataset):
    """Row index of each user's last training example (latest time, ties to the later row), for
    users with at least two training rows, in user order."""
    users = dataset.inter_feat[dataset.uid_field].numpy()
    positions = np.arange(len(users))
    time_field = dataset.time_field
    has_time = time_field is not None and time_field in dataset.inter_feat.columns
    times = dataset.inter_feat[time_field].numpy() if has_time else positions
    order = np.lexsort((positions, times, users))
    sorted_users = users[order]
    is_last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    is_first = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    return np.sort(order[is_last & ~is_first])
