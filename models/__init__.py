"""ocrflow models: DeepEncoder + DeepSeek-3B-MoE (DeepSeek-OCR), DeepEncoder V2 + the same decoder
(DeepSeek-OCR 2), tokenizer, prompts, checkpoints.

Configs, tokenizer and prompts are imported eagerly (they are light and do not import torch,
so data-engine workers that only need the prompt format stay cheap). Model classes and the
checkpoint functions are resolved lazily on first attribute access, so ``import models`` stays
cheap and an import error inside a model file surfaces with that file's
own traceback (``from models import DeepseekOCRForCausalLM`` names the failing module).
"""

from __future__ import annotations

import importlib

from .config import (
    PRESETS,
    RESOLUTION_MODES,
    ClipConfig,
    DecoderConfig,
    DeepseekOCR2Config,
    DeepseekOCRConfig,
    FlowEncoderConfig,
    ResolutionMode,
    SamConfig,
    get_mode,
    get_preset,
)
from .prompts import (
    PROMPT_COARSE,
    PROMPT_FIGURE,
    PROMPT_FINE,
    PROMPT_LOCATE,
    PROMPTS,
    format_grounded_block,
    format_grounded_page,
    locate_prompt,
    parse_grounded_output,
)
from .tokenizer import SPECIAL_TOKENS, OCRTokenizer, load_tokenizer

# name -> submodule defining it (resolved on first access, see __getattr__).
_LAZY = {
    "DeepseekOCRForCausalLM": "deepseek_ocr",
    "DeepseekOCRModel": "deepseek_ocr",
    "DeepseekOCR2Model": "deepseek_ocr",
    "DeepEncoderV2": "deepencoder_v2",
    "DeepEncoder": "deepencoder",
    "ImageInput": "image_processing",
    "preprocess_image": "image_processing",
    "num_vision_tokens": "image_processing",
    "build_meta_model": "checkpoint",
    "config_from_json": "checkpoint_config",
    "expected_published_shapes": "checkpoint",
    "export_checkpoint": "checkpoint",
    "import_checkpoint": "checkpoint",
    "load_config": "checkpoint_config",
    "load_published_weights": "checkpoint",
    "published_config": "checkpoint_config",
    "published_to_state_dict": "checkpoint",
    "state_dict_to_published": "checkpoint",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    # config
    "DeepseekOCRConfig", "DeepseekOCR2Config", "FlowEncoderConfig", "SamConfig", "ClipConfig", "DecoderConfig", "ResolutionMode",
    "PRESETS", "RESOLUTION_MODES", "get_preset", "get_mode",
    # tokenizer / prompts
    "OCRTokenizer", "load_tokenizer", "SPECIAL_TOKENS",
    "PROMPT_COARSE", "PROMPT_FINE", "PROMPT_FIGURE", "PROMPT_LOCATE", "PROMPTS",
    "format_grounded_block", "format_grounded_page", "locate_prompt", "parse_grounded_output",
    # models and checkpoint functions (lazy)
    *_LAZY,
]
