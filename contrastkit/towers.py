"""Two towers in one embedding space: asymmetric query/document encoders and image–text models.

A `DualEncoder` maps queries and documents (or texts and images) into one space:

    q = normalize(W_q · f_q(query)),   d = normalize(W_d · f_d(document)),   s(q, d) = q · d

where f_q, f_d are the towers and W_q, W_d projections to a shared dimension. The towers are either

* **shared**: one encoder for both sides, told apart by a prefix on each text ("query: " /
  "passage: ", as E5 and BGE are trained); or
* **separate**: any Hugging Face text model (`TextTower`), any Hugging Face vision model —
  ViT, CLIP's vision tower — (`VisionTower`), or any torch module (`ModuleTower`).

The learnable logit scale of CLIP lives here, in the model, and the loss takes it as an argument
(open_clip's split): logit_scale = exp(t), initialised to 1/0.07 and clamped at 100 (Radford et al.
2021, "Learning Transferable Visual Models From Natural Language Supervision", ICML; BibTeX in
`DualEncoder.citation`). Docs: docs/towers.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.data.images import load_image
from contrastkit.encoder import (DOCUMENT_PROMPT_NAMES, Encoder, encode_longest_first, refuse_hub_code,
                                 resolve_model_path)
from contrastkit.errors import ModelLoadError
from contrastkit.losses.info_nce import INFO_NCE_CITATION
from contrastkit.st_layout import quiet_hf_progress

CONFIG_FILE = "dual_encoder.json"
WEIGHTS_FILE = "dual_encoder.safetensors"
SIDES = ("query", "document")
CLIP_INIT_LOGIT_SCALE = 1 / 0.07
CLIP_MAX_LOGIT_SCALE = 100.0


# ---------------------------------------------------------------------------------------- towers
class Tower(nn.Module):
    """One side of a DualEncoder: raw items → features [n, D_tower], before the projection.

    `prepare` turns raw items into what `forward` takes (texts stay texts; images become pixel
    tensors), once per batch, so gradient caching's second pass does not decode images again.
    """

    kind: ClassVar[str] = ""            # the name saved in dual_encoder.json
    modality: ClassVar[str] = "tensor"  # "text", "image" or "tensor"

    @property
    def output_dim(self) -> int:
        raise NotImplementedError

    def prepare(self, items: Sequence) -> list:
        return list(items)

    def lengths(self, prepared: Sequence) -> list[int]:
        """Sizes for length-sorted chunks; equal by default, so chunks keep the batch's order."""
        return [0] * len(prepared)

    @property
    def packs(self) -> bool:
        """True when the tower cuts its own slabs of a whole group (contrastkit/packing.py)."""
        return False

    def save(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> "Tower":
        raise NotImplementedError


class TextTower(Tower):
    """Any Hugging Face text model through contrastkit's `Encoder` (pooling, optional normalisation)."""

    kind = "text"
    modality = "text"

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "default", **kwargs: Any) -> "TextTower":
        """"default", a local Hugging Face or sentence-transformers folder (see `Encoder.from_pretrained`)."""
        return cls(Encoder.from_pretrained(name_or_path, **kwargs))

    @property
    def output_dim(self) -> int:
        return self.encoder.embedding_dim

    def lengths(self, prepared: Sequence[str]) -> list[int]:
        return self.encoder.token_lengths(list(prepared))

    @property
    def packs(self) -> bool:
        return self.encoder.packs

    def forward(self, prepared: Sequence[str]) -> Tensor:
        return self.encoder.embed(list(prepared))

    def save(self, path: Path) -> None:
        self.encoder.save(path)

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> "TextTower":
        return cls(Encoder.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False),
                                           torch_dtype=kwargs.get("torch_dtype")))


class VisionTower(Tower):
    """Any Hugging Face vision model (ViTModel, CLIPVisionModel, ...) with its own image processor.

    pooling: "pooler" (the model's pooled output: CLIP's post-layernorm CLS, ViT's pooler; the CLS
    token when the model has none), "cls" or "mean" (over patch tokens).
    """

    kind = "image"
    modality = "image"

    def __init__(self, model: nn.Module, processor: Any, *, pooling: str = "pooler") -> None:
        super().__init__()
        if pooling not in ("pooler", "cls", "mean"):
            raise ValueError(f"unknown vision pooling {pooling!r}; expected pooler, cls or mean")
        self.model = model
        self.processor = processor
        self.pooling = pooling

    @classmethod
    def from_config(cls, config: Any, *, pooling: str = "pooler", **processor_overrides: Any) -> "VisionTower":
        """A randomly initialised model of `config` with a matching processor (no hub download)."""
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), image_processor_for(config, **processor_overrides), pooling=pooling)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, pooling: str = "pooler",
                        trust_remote_code: bool = False, torch_dtype: torch.dtype | None = None) -> "VisionTower":
        """A local folder with config.json, .safetensors weights and preprocessor_config.json."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        path = resolve_model_path(path)
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"'{path}' has no .safetensors weights; contrastkit loads safetensors only")
        kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        try:
            config = AutoConfig.from_pretrained(path, **kwargs)
            refuse_hub_code(config, path, trust_remote_code)
            model, loading = AutoModel.from_pretrained(path, config=config, use_safetensors=True,
                                                       output_loading_info=True,
                                                       **({"dtype": torch_dtype} if torch_dtype else {}), **kwargs)
            processor = AutoImageProcessor.from_pretrained(path, **kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelLoadError(f"cannot load the vision model in '{path}': {exc}") from exc
        missing = list(loading.get("missing_keys", []))
        unpooled = [key for key in missing if key.startswith("pooler.")]
        if len(unpooled) < len(missing):  # a part of the network would start from random numbers
            raise ModelLoadError(f"the weights in '{path}' leave {len(missing) - len(unpooled)} of the model's tensors "
                                 f"unset ({', '.join(k for k in missing if k not in unpooled)[:200]})")
        if unpooled and getattr(model, "pooler", None) is not None:
            # a checkpoint saved without its pooler (ViTForImageClassification's): a random pooler would
            # be the default output, other at each load; without one, "pooler" takes the CLS token
            model.pooler = None
        if getattr(model, "vision_model", None) is not None and hasattr(model, "text_model"):
            model = model.vision_model  # a whole CLIP folder: keep its vision tower
        return cls(model.eval(), processor, pooling=pooling)

    @property
    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def prepare(self, items: Sequence) -> list[Tensor]:
        """Image files, PIL images or pixel tensors [3, H, W] → pixel tensors, via the model's processor."""
        from PIL import Image

        items = list(items)
        if all(isinstance(item, Tensor) for item in items):
            return items
        images = [item if isinstance(item, Image.Image) else load_image(item) for item in items]
        return list(self.processor(images=images, return_tensors="pt")["pixel_values"].unbind(0))

    def forward(self, prepared: Sequence[Tensor]) -> Tensor:
        first = next(self.model.parameters())
        pixels = torch.stack(list(prepared)).to(device=first.device, dtype=first.dtype)
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if self.pooling == "pooler" and pooled is not None:
            return pooled
        tokens = out.last_hidden_state
        return tokens[:, 1:].mean(1) if self.pooling == "mean" else tokens[:, 0]

    def save(self, path: Path) -> None:
        with quiet_hf_progress():
            self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        (Path(path) / "vision_tower.json").write_text(json.dumps({"pooling": self.pooling}), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> "VisionTower":
        settings = json.loads((Path(path) / "vision_tower.json").read_text(encoding="utf-8"))
        return cls.from_pretrained(path, pooling=settings["pooling"],
                                   trust_remote_code=kwargs.get("trust_remote_code", False),
                                   torch_dtype=kwargs.get("torch_dtype"))


class ModuleTower(Tower):
    """Any torch module mapping a batch (stacked tensors, or the list of items) to [n, output_dim].

    Its weights are saved as safetensors; loading needs the module built again by the caller
    (`DualEncoder.load(path, modules={"document": MyNet()})`): code is never unpickled.
    """

    kind = "module"

    def __init__(self, module: nn.Module, output_dim: int) -> None:
        super().__init__()
        self.module = module
        self._output_dim = int(output_dim)

    @property
    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, prepared: Sequence) -> Tensor:
        items = list(prepared)
        return self.module(torch.stack(items) if all(isinstance(i, Tensor) for i in items) else items)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.module.state_dict().items()}, str(path / "module.safetensors"))
        (path / "module_tower.json").write_text(json.dumps({"output_dim": self.output_dim}), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> "ModuleTower":
        from safetensors.torch import load_file

        module = kwargs.get("module")
        if module is None:
            raise ModelLoadError(f"'{path}' holds the weights of a plain torch module; pass the module itself "
                                 f"(DualEncoder.load(..., modules={{side: module}})) to load them into")
        module.load_state_dict(load_file(str(Path(path) / "module.safetensors")))
        settings = json.loads((Path(path) / "module_tower.json").read_text(encoding="utf-8"))
        return cls(module, settings["output_dim"])


TOWER_KINDS: dict[str, type[Tower]] = {t.kind: t for t in (TextTower, VisionTower, ModuleTower)}


def image_processor_for(config: Any, **overrides: Any) -> Any:
    """The image processor a vision config expects, built locally: CLIP's for CLIP, ViT's otherwise.

    Size comes from `config.image_size`; CLIP's resizes the shorter side and centre-crops, ViT's
    resizes to a square; both rescale to [0, 1] and normalise with their model's mean and std.
    Uses the Pillow back-end (torchvision is not needed).
    """
    import transformers

    size = int(getattr(config, "image_size", 224))
    if "clip" in str(getattr(config, "model_type", "")):
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    else:
        cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
        kwargs = dict(size={"height": size, "width": size})
    return cls(**{**kwargs, **overrides})


# ---------------------------------------------------------------------------------------- model
class Projection(nn.Linear):
    """A tower's features → the shared space: W · x (CLIP's W_i / W_t), no bias.

    Identity-initialised when the widths match, so a pretrained tower starts where it was;
    otherwise N(0, 1/in_dim), as CLIP's projections.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim, bias=False)
        with torch.no_grad():
            if in_dim == out_dim:
                self.weight.copy_(torch.eye(in_dim))
            else:
                nn.init.normal_(self.weight, std=in_dim ** -0.5)


class DualEncoder(nn.Module):
    """Queries and documents (or texts and images) → one embedding space, by one or two towers.

    Args:
        query_tower: the query side (for image–text models, usually the text tower).
        document_tower: the document side; None (or the same object) shares the query tower.
        dim: the shared dimension (default: the query tower's width).
        project: put a `Projection` after each tower; default True for separate towers (their
            widths and spaces differ), False for a shared one (its space is already shared).
        query_prefix, document_prefix: prepended to texts of that side ("query: ", "passage: ").
        normalize: L2-normalise the outputs (cosine similarity).
        logit_scale, max_logit_scale: the learnable logit scale's start and clamp (CLIP: 1/0.07, 100).

    Example:
        >>> model = DualEncoder.shared("default", query_prefix="query: ", document_prefix="passage: ")
        >>> clip = DualEncoder(TextTower.from_pretrained(text_dir), VisionTower.from_pretrained(vit_dir), dim=512)
        >>> clip.encode_images(["cat.jpg"]) @ clip.encode_queries(["a photo of a cat"]).T
    """

    citation = INFO_NCE_CITATION  # InfoNCE (van den Oord et al. 2018) and CLIP (Radford et al. 2021)

    def __init__(self, query_tower: Tower, document_tower: Tower | None = None, *, dim: int | None = None,
                 project: bool | None = None, query_prefix: str = "", document_prefix: str = "",
                 normalize: bool = True, logit_scale: float = CLIP_INIT_LOGIT_SCALE,
                 max_logit_scale: float = CLIP_MAX_LOGIT_SCALE) -> None:
        super().__init__()
        shared = document_tower is None or document_tower is query_tower
        if not 0 < logit_scale <= max_logit_scale:
            raise ValueError(f"need 0 < logit_scale <= max_logit_scale; got {logit_scale}, {max_logit_scale}")
        self.towers = nn.ModuleDict({"query": query_tower} if shared else
                                    {"query": query_tower, "document": document_tower})
        self.dim = int(dim or query_tower.output_dim)
        self.project = (not shared or dim is not None) if project is None else project
        if not self.project and any(self.tower(s).output_dim != self.dim for s in SIDES):
            raise ValueError(f"without projections both towers must have width dim = {self.dim}; got "
                             f"{self.tower('query').output_dim} and {self.tower('document').output_dim}")
        self.projections = nn.ModuleDict({s: Projection(self.tower(s).output_dim, self.dim) for s in SIDES}
                                         if self.project else {})
        self.prefixes = {"query": query_prefix, "document": document_prefix}
        self.normalize = normalize
        self.max_logit_scale = float(max_logit_scale)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))

    @classmethod
    def shared(cls, encoder: Encoder | str | os.PathLike = "default", *, query_prefix: str = "query: ",
               document_prefix: str = "passage: ", **kwargs: Any) -> "DualEncoder":
        """One text encoder for both sides, told apart by the prefixes (asymmetric retrieval)."""
        if not isinstance(encoder, Encoder):
            encoder = Encoder.from_pretrained(encoder)
        return cls(TextTower(encoder), query_prefix=query_prefix, document_prefix=document_prefix, **kwargs)

    # ------------------------------------------------------------------ parts
    @property
    def is_shared(self) -> bool:
        return "document" not in self.towers

    def tower(self, side: str) -> Tower:
        if side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
        return self.towers["query" if self.is_shared else side]

    @property
    def image_side(self) -> str:
        """The side whose tower takes images."""
        sides = [s for s in SIDES if self.tower(s).modality == "image"]
        if not sides:
            raise ValueError("this DualEncoder has no vision tower: nothing can encode images")
        return sides[-1]

    @property
    def logit_scale(self) -> Tensor:
        """exp(t) clamped at max_logit_scale (CLIP: ≤ 100): multiplies the cosine similarities."""
        return self.log_logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    @torch.no_grad()
    def clamp_scale_(self) -> None:
        """Put the log logit scale back on log(max_logit_scale) if a step took it past, in place.

        The forward clamp passes no gradient past the bound, so a parameter left there could never
        come back down; open_clip clamps CLIP's in place after each optimizer step, as the trainer
        calls this.
        """
        self.log_logit_scale.clamp_(max=math.log(self.max_logit_scale))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ forward
    def prepare(self, side: str, items: Sequence) -> list:
        """Raw items of one side → what its tower takes (prefixed texts, pixel tensors)."""
        return self.tower(side).prepare(self._prefixed(side, items))

    def lengths(self, side: str, prepared: Sequence) -> list[int]:
        """Per-item sizes for length-sorted chunks (token counts for texts; equal for images)."""
        return self.tower(side).lengths(prepared)

    def packs(self, side: str) -> bool:
        """True when this side's tower runs the packed forward on a whole group (no chunks needed)."""
        return self.tower(side).packs

    def embed_prepared(self, side: str, prepared: Sequence) -> Tensor:
        """Prepared items → embeddings [n, dim] with a graph: tower, projection, L2 norm."""
        features = self.tower(side)(prepared)
        if self.project:
            features = self.projections[side](features.to(self.projections[side].weight.dtype))
        return F.normalize(features, dim=-1) if self.normalize else features

    def embed(self, side: str, items: Sequence) -> Tensor:
        """Raw items → embeddings [n, dim], keeping the graph (for training)."""
        return self.embed_prepared(side, self.prepare(side, items))

    def _prefixed(self, side: str, items: Sequence) -> list:
        prefix = self.prefixes[side]
        if prefix and self.tower(side).modality == "text":
            return [prefix + text for text in items]
        return list(items)

    # ------------------------------------------------------------------ encode (no graph)
    @torch.inference_mode()
    def encode_side(self, side: str, items: Sequence, batch_size: int = 32,
                    show_progress: bool = False) -> np.ndarray:
        """Items of one side → float32 numpy [n, dim], in the order given; texts in length-sorted batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        items = list(items)
        lengths = self.tower(side).lengths(self._prefixed(side, items))
        return encode_longest_first(self, items, lengths, lambda batch: self.embed(side, batch), self.dim,
                                    batch_size=batch_size, show_progress=show_progress,
                                    desc=f"encoding {side}s", unit="item")

    def encode_queries(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Queries (with the query prefix) through the query tower: float32 [n, dim]."""
        return self.encode_side("query", texts, batch_size, show_progress)

    def encode_documents(self, items: Sequence, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Documents (with the document prefix; images for an image tower) through the document tower."""
        return self.encode_side("document", items, batch_size, show_progress)

    def encode_images(self, images: Sequence, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Image files, PIL images or pixel tensors through the vision tower: float32 [n, dim]."""
        return self.encode_side(self.image_side, images, batch_size, show_progress)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike) -> Path:
        """Write both towers (`query/`, `document/` unless shared), the projections and the logit scale.

        A shared text tower is a sentence-transformers folder whose prompts hold the prefixes
        ({"query": ..., "document": ...}), so `SentenceTransformer(path / "query")` encodes with
        `prompt_name="query"` as this model does (when there is no projection).
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.is_shared and isinstance(self.towers["query"], TextTower):
            # the sides' prompts are exactly the prefixes, empty ones too: "document" is the name
            # sentence-transformers' encode_document (and side_prompt) take first, before an E5
            # folder's "passage", which would otherwise outlive an empty prefix
            encoder = self.towers["query"].encoder
            prompts = {k: v for k, v in encoder.prompts.items() if k not in ("query", *DOCUMENT_PROMPT_NAMES)}
            encoder.prompts = {**prompts, **self.prefixes}
            if encoder.default_prompt_name not in encoder.prompts:
                encoder.default_prompt_name = None
        for name, tower in self.towers.items():
            tower.save(path / name)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("towers.")}
        save_file(state, str(path / WEIGHTS_FILE))
        config = {"format": 1, "towers": {name: tower.kind for name, tower in self.towers.items()},
                  "dim": self.dim, "project": self.project, "normalize": self.normalize,
                  "query_prefix": self.prefixes["query"], "document_prefix": self.prefixes["document"],
                  "max_logit_scale": self.max_logit_scale}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, modules: dict[str, nn.Module] | None = None,
             trust_remote_code: bool = False, torch_dtype: torch.dtype | None = None) -> "DualEncoder":
        """Load a folder written by `save`; `modules` rebuilds `ModuleTower` sides ({"query": net, ...}).

        `torch_dtype` loads the whole model in that precision: the towers, the projections and the
        logit scale (default: float32).
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise ModelLoadError(f"'{path}' is not a DualEncoder folder (no {CONFIG_FILE})")
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        towers = {}
        for name, kind in config["towers"].items():
            if kind not in TOWER_KINDS:
                raise ModelLoadError(f"'{path}': unknown tower kind {kind!r} for the {name} side")
            towers[name] = TOWER_KINDS[kind].load(path / name, module=(modules or {}).get(name),
                                                  trust_remote_code=trust_remote_code, torch_dtype=torch_dtype)
        model = cls(towers["query"], towers.get("document"), dim=config["dim"], project=config["project"],
                    query_prefix=config["query_prefix"], document_prefix=config["document_prefix"],
                    normalize=config["normalize"], max_logit_scale=config["max_logit_scale"],
                    logit_scale=min(CLIP_INIT_LOGIT_SCALE, config["max_logit_scale"]))  # the saved one is loaded below
        if torch_dtype is not None:  # before loading: the saved projections keep their precision
            model.to(torch_dtype)
        weights = load_file(str(path / WEIGHTS_FILE))
        missing = set(weights) ^ {k for k in model.state_dict() if not k.startswith("towers.")}
        if missing:
            raise ModelLoadError(f"'{path / WEIGHTS_FILE}' does not match the model: {sorted(missing)}")
        model.load_state_dict(weights, strict=False)
        return model.eval()
