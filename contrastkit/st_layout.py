"""Read and write the sentence-transformers folder layout, so any RAG stack can load our models.

A sentence-transformers folder holds modules.json (the pipeline: Transformer → Pooling → Normalize),
the Hugging Face model and tokenizer files of the Transformer module, 1_Pooling/config.json,
sentence_bert_config.json (max_seq_length) and config_sentence_transformers.json.
We write the classic layout (module types under `sentence_transformers.models`), which every
sentence-transformers release from 2.x to 6.x loads, and read both it and the 6.x layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from contrastkit.errors import ModelLoadError

_TRANSFORMER = "Transformer"
_POOLING = "Pooling"
_NORMALIZE = "Normalize"

# classic pooling-config flag → our pooling mode
_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}
# sentence-transformers 6.x "pooling_mode" value → ours
_POOLING_NAMES = {"mean": "mean", "cls": "cls", "lasttoken": "last", "last": "last"}


@dataclass
class STLayout:
    """What a sentence-transformers folder says about how to build the encoder."""

    transformer_dir: Path
    pooling: str
    normalize: bool
    max_seq_length: int | None
    prompts: dict[str, str]
    default_prompt_name: str | None = None  # the prompt `encode` prepends when asked for none
    do_lower_case: bool = False             # texts lower-cased before tokenizing
    similarity_fn_name: str = "cosine"      # what `SentenceTransformer.similarity` scores with


def is_st_folder(path: Path) -> bool:
    """True when the folder has a modules.json (the sentence-transformers marker)."""
    return (path / "modules.json").is_file()


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def _module_kind(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]


def _read_pooling(config: dict, config_path: Path) -> str:
    if config.get("include_prompt") is False:
        raise ModelLoadError(f"{config_path}: pooling that leaves the prompt's tokens out (include_prompt: false) "
                             f"is not supported; contrastkit pools over every token, prompt included")
    if "pooling_mode" in config:  # sentence-transformers 6.x: a name, or a list of names
        names = config["pooling_mode"]
        names = names if isinstance(names, list) else [names]
        if len(names) != 1 or not isinstance(names[0], str) or names[0] not in _POOLING_NAMES:
            raise ModelLoadError(f"{config_path}: pooling mode {config['pooling_mode']!r} is not supported "
                                 f"(one of: mean, cls, lasttoken)")
        return _POOLING_NAMES[names[0]]
    enabled = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)]
    others = [k for k, v in config.items()
              if k.startswith("pooling_mode_") and v and k not in _POOLING_FLAGS]
    if others or len(enabled) != 1:
        raise ModelLoadError(f"{config_path}: exactly one of mean, cls or last-token pooling must be "
                             f"enabled; found {enabled + others or 'none'}")
    return enabled[0]


def read_st_layout(path: Path) -> STLayout:
    """Parse modules.json and the module configs of a sentence-transformers folder."""
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{path / 'modules.json'}: expected a non-empty list of modules")
    kinds = [_module_kind(m.get("type", "")) for m in modules]
    unsupported = [k for k in kinds if k not in (_TRANSFORMER, _POOLING, _NORMALIZE)]
    if unsupported or kinds[0] != _TRANSFORMER:
        raise ModelLoadError(
            f"{path / 'modules.json'}: contrastkit loads Transformer → Pooling [→ Normalize] pipelines; "
            f"this one is {' → '.join(kinds)}")
    by_kind = {kind: module for kind, module in zip(kinds, modules)}
    transformer_dir = path / by_kind[_TRANSFORMER].get("path", "")

    pooling = "mean"
    if _POOLING in by_kind:
        pooling_config_path = path / by_kind[_POOLING]["path"] / "config.json"
        pooling = _read_pooling(_read_json(pooling_config_path), pooling_config_path)

    max_seq_length, do_lower_case = None, False
    for config_dir in {transformer_dir, path}:
        sbert = config_dir / "sentence_bert_config.json"
        if sbert.is_file():
            sbert_config = _read_json(sbert)
            value = sbert_config.get("max_seq_length")
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelLoadError(f"{sbert}: max_seq_length must be a positive whole number; got {value!r}")
            max_seq_length = value or max_seq_length
            do_lower_case = do_lower_case or sbert_config.get("do_lower_case") is True
    prompts, default_prompt_name, similarity_fn_name = {}, None, "cosine"
    st_config = path / "config_sentence_transformers.json"
    if st_config.is_file():
        st = _read_json(st_config)
        # empty ones kept: sentence-transformers 6 writes "document": "" and then takes it before "passage"
        prompts = {k: v for k, v in (st.get("prompts") or {}).items() if isinstance(v, str)}
        default_prompt_name = st.get("default_prompt_name") or None
        if default_prompt_name is not None and default_prompt_name not in prompts:
            raise ModelLoadError(f"{st_config}: default_prompt_name {default_prompt_name!r} names no prompt "
                                 f"(prompts: {', '.join(prompts) or 'none'})")
        similarity_fn_name = st.get("similarity_fn_name") or "cosine"
    return STLayout(transformer_dir=transformer_dir, pooling=pooling, normalize=_NORMALIZE in by_kind,
                    max_seq_length=max_seq_length, prompts=prompts, default_prompt_name=default_prompt_name,
                    do_lower_case=do_lower_case, similarity_fn_name=similarity_fn_name)


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hugging Face's own progress bars off for the duration (restored after).

    transformers draws a "Writing model shards" bar for every `save_pretrained`, a tenth of a second
    for MiniLM; during training (a checkpoint) it broke the line of the trainer's own bar.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def write_st_layout(path: Path, *, embedding_dim: int, pooling: str, normalize: bool,
                    max_seq_length: int, do_lower_case: bool = False, versions: dict | None = None,
                    prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                    similarity_fn_name: str = "cosine") -> None:
    """Write the sentence-transformers files around an already saved HF model in `path`."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": embedding_dim,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling == "last",
        "include_prompt": True,
    }
    (path / "1_Pooling").mkdir(exist_ok=True)
    _write_json(path / "1_Pooling" / "config.json", pooling_config)
    _write_json(path / "modules.json", modules)
    _write_json(path / "sentence_bert_config.json",
                {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case})
    _write_json(path / "config_sentence_transformers.json", {
        "__version__": versions or {},
        "prompts": prompts or {},
        "default_prompt_name": default_prompt_name,
        "similarity_fn_name": similarity_fn_name,
    })


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
