"""Multi-process training on torch.distributed, through RecBole's own launcher keys
(``nproc``, ``world_size``, ``ip``, ``port``, ``offset``).

What the plugin adds to RecBole's DDP path (used by ``config``, ``compat`` and the trainers):

- ``init_cpu_process_group``: RecBole always starts ``nccl`` on CUDA; with ``ddp_backend: gloo``
  (or ``auto`` without a GPU) the processes run on the CPU over ``gloo``;
- ``average_gradients``: the group-aware trainers take their gradients on the plain model
  (BiFair's look-ahead needs ``torch.func`` on it), so they average them across ranks
  themselves, one all-reduce per step and level;
- ``SyncedBalancer``: a balancer whose group statistics are reduced across ranks before each
  update, so every rank holds the same group weights;
- ``gather_rows``: the rows of an evaluation collected on every rank, so every metric,
  fairness metrics included, is computed once over the whole split.

Every helper is a no-op in a single process.
"""
import contextlib
import socket

import torch
import torch.distributed as dist

BACKENDS = ("auto", "nccl", "gloo")


def free_port(host="localhost"):
    """A TCP port free on ``host`` now, for ``--port``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return str(s.getsockname()[1])


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process():
    """Rank 0 of the whole group (or the only process): the one that writes files."""
    return not is_distributed() or dist.get_rank() == 0


def check_finite_on_all_ranks(loss):
    """Whether every value of ``loss`` is finite on every rank: a rank that stopped alone would
    leave the others waiting in their next collective call."""
    if not is_distributed():
        return bool(torch.isfinite(loss).all())
    finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


@contextlib.contextmanager
def local_rank0_first(config):
    """Local rank 0 runs the block first (preparing datasets, encoding item texts into the
    cache); the other ranks run it after, finding the files made."""
    distributed = not config["single_spec"]
    if distributed and config["local_rank"] != 0:
        dist.barrier()
    yield
    if distributed and config["local_rank"] == 0:
        dist.barrier()


def choose_backend(requested, cuda_available):
    """``nccl`` on GPUs, ``gloo`` on the CPU (``auto``), or what the user asked for;
    ``cuda_available``: CUDA is visible and ``gpu_id`` names GPUs."""
    from recbole_bifair.errors import BiFairInputError

    if requested not in BACKENDS:
        raise BiFairInputError(f"ddp_backend must be one of {', '.join(BACKENDS)}, got {requested!r}.")
    if requested == "auto":
        return "nccl" if cuda_available else "gloo"
    if requested == "nccl" and not cuda_available:
        raise BiFairInputError("ddp_backend 'nccl' needs CUDA GPUs; none is visible. Use ddp_backend: gloo on CPUs.")
    return requested


def init_cpu_process_group(config):
    """Join the process group over gloo and run this rank on the CPU (RecBole's keys and
    rank rules: rank ``local_rank + offset``; ranks other than 0 log only errors)."""
    dist.init_process_group(
        backend="gloo",
        rank=config["local_rank"] + config["offset"],
        world_size=config["world_size"],
        init_method=f"tcp://{config['ip']}:{config['port']}",
    )
    config["device"] = torch.device("cpu")
    config["single_spec"] = False
    if config["local_rank"] != 0:
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False


def average_gradients(params):
    """Replace each trainable parameter's gradient by its mean over the ranks (one
    all-reduce); a parameter without a gradient on this rank counts as a zero gradient."""
    if not is_distributed():
        return
    trainable = [p for p in params if p.requires_grad]
    for p in trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not trainable:
        return
    flat = torch.cat([p.grad.flatten() for p in trainable])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in trainable:
        p.grad.copy_(flat[offset: offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def reduce_group_statistics(group_losses, counts, group_gradients=None):
    """Group mean losses, example counts and (optionally) group gradients over the batches
    of all ranks: each rank's group means weighted by its example counts."""
    losses, counts = group_losses.detach().double(), counts.double()
    packed = [losses * counts, counts]
    if group_gradients is not None:
        packed.append((group_gradients.double() * counts.unsqueeze(1)).flatten())
    flat = torch.cat(packed)
    dist.all_reduce(flat)
    k = len(counts)
    total_counts = flat[k: 2 * k]
    divisor = total_counts.clamp(min=1)
    mean_losses = (flat[:k] / divisor).to(group_losses.dtype)
    gradients = None
    if group_gradients is not None:
        gradients = (flat[2 * k:].view_as(group_gradients) / divisor.unsqueeze(1)).to(group_gradients.dtype)
    return mean_losses, total_counts.to(torch.long), gradients


class SyncedBalancer:
    """A balancer (``trainer.balancer``) that sees the group statistics of all ranks."""

    def __init__(self, balancer):
        self.balancer = balancer

    def update(self, group_losses, counts, group_gradients=None):
        self.balancer.update(*reduce_group_statistics(group_losses, counts, group_gradients))

    def __getattr__(self, name):
        if name == "balancer":  # not set yet: while copy or pickle rebuilds the object
            raise AttributeError(name)
        return getattr(self.balancer, name)


def gather_rows(tensor):
    """``tensor`` of every rank concatenated along dim 0 in rank order (ranks may hold
    different numbers of rows)."""
    if tensor.dtype == torch.bool:
        return gather_rows(tensor.to(torch.uint8)).bool()
    world = dist.get_world_size()
    rows = torch.tensor([len(tensor)], device=tensor.device)
    all_rows = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(all_rows, rows)
    longest = int(max(r.item() for r in all_rows))
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[: int(r.item())] for part, r in zip(gathered, all_rows)])


def padding_rows(eval_data):
    """How many of this rank's evaluation rows are ``DistributedSampler``'s padding: it
    repeats the first samples so every rank gets as many; they come last on a rank."""
    sampler = getattr(eval_data, "sampler", None)
    if not isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
        return 0
    n_samples = len(sampler.dataset)
    return sum(p >= n_samples for p in range(sampler.rank, sampler.total_size, sampler.num_replicas))


def broadcast_from_rank0(value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
