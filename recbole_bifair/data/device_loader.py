"""The device-resident training loader (``fast_loader``): the training split materialised once as
tensors on the run's device, each epoch's order drawn exactly as RecBole's loader draws it, and
batches cut by index slicing, so no batch is collated on the host or copied to the device.

For the cases it covers (no negative sampling, no data transform) a run sees the same batches, in
the same order, as with RecBole's ``TrainDataLoader``: the order comes from the loader's own
generator through the same ``RandomSampler`` (or, under DDP, the same ``DistributedSampler``,
so the ranks' shards stay disjoint), and the rows are ``dataset[index]`` with the item and user
features joined, as RecBole's ``collate_fn`` gives them.

``fast_loader``: ``off`` (RecBole's loader), ``on`` (this loader; a case it does not cover is an
error), ``auto`` (this loader where it covers the case, else RecBole's, with one log line saying
why).
"""
from logging import getLogger

import torch
from recbole.data.interaction import Interaction

from recbole_bifair.errors import BiFairInputError

FAST_LOADER_MODES = ("auto", "on", "off")
DEVICE_MEMORY_SHARE = 0.5  # the training tensors may take at most this share of the free device memory


def training_loader(config, train_data):
    """``train_data`` (RecBole's loader) or a :class:`DeviceTrainLoader` over it, by ``fast_loader``."""
    mode = fast_loader_mode(config)
    if mode == "off":
        return train_data
    reason = uncovered_reason(train_data)
    if reason is None:
        table = materialised_rows(train_data)
        reason = memory_reason(table, config["device"])
        if reason is None:
            getLogger().info("fast_loader: the training split is held on the device and batched by slicing")
            return DeviceTrainLoader(train_data, table.to(config["device"]))
    if mode == "on":
        raise BiFairInputError(f"fast_loader: on cannot be used here: {reason}. Set fast_loader: auto (RecBole's "
                               "loader in such cases) or off.")
    getLogger().info(f"fast_loader: RecBole's loader ({reason})")
    return train_data


def fast_loader_mode(config):
    """``fast_loader`` as ``auto``, ``on`` or ``off`` (YAML reads a bare on / off as true / false)."""
    mode = config["fast_loader"]
    mode = {True: "on", False: "off"}.get(mode, mode) if isinstance(mode, bool) else mode
    if mode not in FAST_LOADER_MODES:
        raise BiFairInputError(f"fast_loader must be one of {', '.join(FAST_LOADER_MODES)}; got {config['fast_loader']!r}.")
    return mode


def uncovered_reason(train_data):
    """Why the device loader cannot reproduce ``train_data``'s batches, or None."""
    if train_data.neg_sample_args.get("distribution", "none") != "none":
        dynamic = "dynamic " if train_data.neg_sample_args.get("dynamic") else ""
        return f"the model samples {dynamic}negatives ({train_data.neg_sample_args['distribution']})"
    if type(train_data.transform).__name__ != "Equal":
        return f"the batches pass through a data transform ({type(train_data.transform).__name__}, e.g. BERT4Rec's masking)"
    return None


def materialised_rows(train_data):
    """Every training row as RecBole's ``collate_fn`` gives a batch of them (features joined)."""
    dataset = train_data._dataset
    return dataset[torch.arange(len(dataset)).numpy()]


def memory_reason(table, device):
    """Why ``table`` should not be moved to ``device`` (too little free memory), or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    needed = sum(t.element_size() * t.nelement() for t in table.interaction.values())
    free, _ = torch.cuda.mem_get_info(device)
    if needed > DEVICE_MEMORY_SHARE * free:
        return f"the training split needs {needed / 2**30:.1f} GiB, more than half of the {free / 2**30:.1f} GiB free"
    return None


class DeviceTrainLoader:
    """RecBole's training loader, its rows held on the device: ``len``, iteration (one epoch of
    batches), ``shuffle``, ``generator`` (the state an exact resume saves), ``sampler`` (DDP's,
    for ``set_epoch``), ``dataset`` / ``_dataset``, ``collate_fn(index)`` and ``neg_sample_args``
    as RecBole's trainers, the collector and the plugin use them."""

    def __init__(self, loader, rows):
        self._loader = loader
        self._rows = rows
        # the order as RecBole's loader draws it: a DataLoader over the row numbers built as RecBole
        # builds its own (same sampler, batch size and generator), whose batches stay index lists
        default = _is_default_sampler(loader)
        self._index_batches = torch.utils.data.DataLoader(
            list(range(loader.sample_size)), batch_size=loader.step, collate_fn=_as_index_tensor,
            shuffle=loader.shuffle if default else False, sampler=None if default else loader.sampler,
            generator=loader.generator)
        self._dataset = loader._dataset
        self.config = loader.config
        self.shuffle = loader.shuffle
        self.generator = loader.generator
        self.sampler = loader.sampler
        self.step = loader.step
        self.neg_sample_args = loader.neg_sample_args
        self.transform = loader.transform

    @property
    def dataset(self):
        return self._dataset

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for index in self._index_batches:
            yield self.collate_fn(index)

    def collate_fn(self, index):
        """The rows ``index`` (a tensor or sequence of row numbers) as one batch on the device."""
        index = torch.as_tensor(index, dtype=torch.long, device=self._device())
        return Interaction({field: values[index] for field, values in self._rows.interaction.items()})

    def _device(self):
        return next(iter(self._rows.interaction.values())).device

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_loader", "_rows"):
            raise AttributeError(name)
        return getattr(self._loader, name)


def _as_index_tensor(indices):
    return torch.as_tensor(indices, dtype=torch.long)


def _is_default_sampler(loader):
    """Whether ``loader`` draws its order with torch's own sequential or random sampler (one
    process), not a ``DistributedSampler`` (DDP)."""
    return isinstance(loader.sampler, (torch.utils.data.RandomSampler, torch.utils.data.SequentialSampler))
