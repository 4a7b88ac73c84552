"""Local ``tokenizer.json`` loading, DeepSeek-OCR special tokens and ``<image>`` expansion.

Works with the official DeepSeek-OCR tokenizer (a ``tokenizer.json`` next to a
``tokenizer_config.json``) and with the byte-level BPE the data engine trains (its special
tokens are ids 0..8 in the order of ``SPECIAL_TOKENS``). Loading never touches the network:
it wraps ``tokenizers.Tokenizer.from_file``.

Prompt layout (docs/INTERFACES.md): ``[bos] + prompt``, where each ``<image>`` in the prompt
becomes ``img.num_tokens`` copies of ``image_token_id``; the model scatters the vision
embeddings into exactly those positions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

from .prompts import DET_END, DET_START, GROUNDING_TOKEN, IMAGE_TOKEN, REF_END, REF_START

# Official spellings (full-width bars, U+2581 "lower one eighth block" as the space marker).
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"

# Order of the engine's BPE specials = ids 0..8.
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, GROUNDING_TOKEN,
    REF_START, REF_END, DET_START, DET_END,
)


class _HasNumTokens(Protocol):
    num_tokens: int


class OCRTokenizer:
    """A ``tokenizers.Tokenizer`` plus the resolved DeepSeek-OCR special token ids."""

    def __init__(self, tokenizer: Tokenizer, *, bos_token: str = BOS_TOKEN,
                 eos_token: str = EOS_TOKEN, pad_token: str = PAD_TOKEN, source: str = "<memory>"):
        self.tokenizer = tokenizer
        self.source = source
        names = {
            "bos": bos_token, "eos": eos_token, "pad": pad_token, "image": IMAGE_TOKEN,
            "grounding": GROUNDING_TOKEN, "ref": REF_START, "/ref": REF_END,
            "det": DET_START, "/det": DET_END,
        }
        ids = {k: tokenizer.token_to_id(tok) for k, tok in names.items()}
        missing = [f"{k}={names[k]!r}" for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(
                f"tokenizer {source} lacks {len(missing)} required special token(s): "
                f"{', '.join(missing)}. DeepSeek-OCR needs {list(SPECIAL_TOKENS)} "
                "(bos/eos/pad may be renamed in tokenizer_config.json)"
            )
        self.special_tokens = names
        self.special_ids = ids
        self.bos_token_id: int = ids["bos"]
        self.eos_token_id: int = ids["eos"]
        self.pad_token_id: int = ids["pad"]
        self.image_token_id: int = ids["image"]

    @property
    def vocab_size(self) -> int:
        """Size of the id space incl. added tokens (the embedding needs at least this many rows)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos (special tokens in the text are recognized)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            # Strip bos/eos/pad/image but keep grounding markup: it is part of the output format.
            drop = {self.bos_token_id, self.eos_token_id, self.pad_token_id, self.image_token_id}
            ids = [i for i in ids if i not in drop]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def batch_decode(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    def encode_prompt(self, prompt: str, images: Sequence[_HasNumTokens] = (),
                      add_bos: bool = True) -> list[int]:
        """``[bos] + prompt`` with the i-th ``<image>`` replaced by ``images[i].num_tokens`` image ids."""
        parts = prompt.split(IMAGE_TOKEN)
        if len(parts) - 1 != len(images):
            raise ValueError(
                f"prompt has {len(parts) - 1} {IMAGE_TOKEN} placeholder(s) but {len(images)} "
                f"image(s) were given: {prompt[:120]!r}"
            )
        ids = [self.bos_token_id] if add_bos else []
        for i, part in enumerate(parts):
            if i > 0:
                n = int(images[i - 1].num_tokens)
                if n <= 0:
                    raise ValueError(f"image {i - 1} has num_tokens={n}; expected > 0")
                ids.extend([self.image_token_id] * n)
            if part:
                # Encoded piecewise so text never merges across an image boundary.
                ids.extend(self.encode(part))
        return ids

    def __repr__(self) -> str:
        return (f"OCRTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos_token_id}, eos={self.eos_token_id}, pad={self.pad_token_id}, "
                f"image={self.image_token_id})")


def _token_str(v) -> str | None:
    """tokenizer_config.json stores tokens either as strings or as AddedToken dicts."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def load_tokenizer(path: str | Path) -> OCRTokenizer:
    """Load a local tokenizer: a directory holding ``tokenizer.json`` or the file itself.

    If a ``tokenizer_config.json`` sits next to it, its ``bos_token``/``eos_token``/``pad_token``
    override the default official spellings.
    """
    path = Path(path).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json at {path}: pass a directory containing tokenizer.json or the "
            "file path (tokenizers are loaded locally only, never downloaded)"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers error alone does not say which file
        raise ValueError(f"could not parse tokenizer file {file}: {e}") from e

    names = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    cfg_file = file.parent / "tokenizer_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        for key in names:
            v = _token_str(cfg.get(key))
            if v:
                names[key] = v
    return OCRTokenizer(tok, source=str(file), **names)


# The files a model folder carries so that the official scripts (which load the tokenizer from
# the model folder) run on an export.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer_files(src: str | Path, dest: str | Path) -> list[Path]:
    """Copy ``src``'s tokenizer files (a directory or its tokenizer.json) into ``dest``."""
    import shutil

    src = Path(src).expanduser()
    folder = src if src.is_dir() else src.parent
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json at {src} to copy into {dest}")
    copied = []
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            copied.append(Path(shutil.copyfile(folder / name, Path(dest) / name)))
    return copied


__all__ = ["BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "TOKENIZER_FILES", "OCRTokenizer",
           "copy_tokenizer_files", "load_tokenizer"]
