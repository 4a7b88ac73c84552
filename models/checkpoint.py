"""Import / export of the published DeepSeek-OCR checkpoint layout (safetensors + config.json).

The published checkpoint (deepseek-ai/DeepSeek-OCR) is one ``model.safetensors`` of 2710
bfloat16 tensors. Our ``DeepseekOCRForCausalLM.state_dict()`` uses the same names with one
exception (docs/INTERFACES.md): routed experts are stored stacked for grouped GEMM,

    ours:      model.layers.L.mlp.experts.{gate,up,down}_proj            (E, ...)
    published: model.layers.L.mlp.experts.{e}.{gate,up,down}_proj.weight (...)   e = 0..E-1

DeepSeek-OCR 2 (deepseek-ai/DeepSeek-OCR-2) uses the same layout for SAM, the projector, the
separator and the decoder, and adds the flow encoder, whose published names carry two more
``model.`` levels than ours (``models/flow_encoder.py``):

    ours:      model.qwen2_model.{layers.N.*, norm.weight}, model.qwen2_model.query_{768,1024}.weight
    published: model.qwen2_model.model.model.{layers.N.*, norm.weight}, (queries: same names)

``DeepseekOcr2ForConditionalGeneration.save_pretrained`` (transformers 5) writes exactly this
published layout: it reverses its own load-time renames (``vision_tower.*``,
``language_model.*``, fused ``gate_up_proj``) on save, so one layout serves both, and its
config.json (``model_type: deepseek_ocr2``) is what ``published_config`` writes for v2.

This module converts between the two, writes checkpoints (single file, or shards plus a
``model.safetensors.index.json`` as in Hugging Face hubs), writes a ``config.json`` carrying
the published architecture fields plus our full config under ``"ocrflow"`` (models/checkpoint_config.py), and loads
checkpoints strictly: every missing, unexpected or wrong-shaped tensor is named before any
weight is read. Loading streams one tensor at a time into the model's parameters, so peak
memory stays near one model copy even for the 3.3B model.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .checkpoint_config import CONFIG_FILE, config_from_json, load_config, published_config
from .config import DeepseekOCR2Config, DeepseekOCRConfig, ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")

_STACKED = re.compile(r"^(?P<prefix>model\.layers\.\d+\.mlp\.experts)\.(?P<proj>gate_proj|up_proj|down_proj)$")
_PUBLISHED = re.compile(
    r"^(?P<prefix>model\.layers\.\d+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$"
)
# Wrappers that prefix state-dict names (DDP/DeepSpeed "module.", torch.compile "_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_MAX_LISTED = 20  # names listed per problem kind in an error message


# ------------------------------------------------------------------------- name mapping

# (our prefix, published prefix) of module paths whose names differ beyond the experts
_RENAMED = (("model.qwen2_model.layers.", "model.qwen2_model.model.model.layers."),
            ("model.qwen2_model.norm.", "model.qwen2_model.model.model.norm."))


def to_published_name(name: str) -> str:
    for ours, pub in _RENAMED:
        if name.startswith(ours):
            return pub + name[len(ours):]
    return name


def from_published_name(name: str) -> str:
    for ours, pub in _RENAMED:
        if name.startswith(pub):
            return ours + name[len(pub):]
    return name



def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def state_dict_to_published(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> published names; stacked experts are split into per-expert views."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        name = _strip_wrappers(name)
        m = _STACKED.match(name)
        if m is None:
            out[to_published_name(name)] = t
            continue
        for e in range(t.shape[0]):  # (E, out, in) -> E x (out, in)
            out[f"{m['prefix']}.{e}.{m['proj']}.weight"] = t[e]
    return out


def published_to_state_dict(sd: Mapping[str, torch.Tensor], cfg: DeepseekOCRConfig) -> dict[str, torch.Tensor]:
    """Published names -> our names; per-expert weights are stacked to (E, out, in).

    Raises if a layer's experts are not exactly 0..n_routed_experts-1.
    """
    n_exp = cfg.decoder.n_routed_experts
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for name, t in sd.items():
        m = _PUBLISHED.match(name)
        if m is None:
            out[from_published_name(name)] = t
        else:
            experts.setdefault(f"{m['prefix']}.{m['proj']}", {})[int(m["e"])] = t
    for key, per in sorted(experts.items()):
        if sorted(per) != list(range(n_exp)):
            missing = sorted(set(range(n_exp)) - set(per))
            extra = sorted(set(per) - set(range(n_exp)))
            raise ValueError(f"{key}: expected experts 0..{n_exp - 1}; missing {missing}, unexpected {extra}")
        out[key] = torch.stack([per[e] for e in range(n_exp)])
    return out


def _published_targets(model_shapes: Mapping[str, torch.Size]) -> dict[str, tuple[str, int | None, tuple]]:
    """Published name -> (our name, expert index or None, published shape)."""
    targets = {}
    for name, shape in model_shapes.items():
        m = _STACKED.match(name)
        if m is None:
            targets[to_published_name(name)] = (name, None, tuple(shape))
        else:
            for e in range(shape[0]):
                targets[f"{m['prefix']}.{e}.{m['proj']}.weight"] = (name, e, tuple(shape[1:]))
    return targets


# ---------------------------------------------------------------------------- building


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Make ``torch.nn.init`` in-place initializers no-ops while a model is built for loading.

    Random init of 3.3B parameters costs minutes on CPU and is overwritten anyway. Buffers
    computed in ``__init__`` (e.g. RoPE frequencies) are still built normally, which is why
    this beats building on the meta device and ``to_empty``.
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _model_cls():
    from .deepseek_ocr import DeepseekOCRForCausalLM  # lazy: checkpoint.py is imported by models/__init__

    return DeepseekOCRForCausalLM


def build_meta_model(cfg: DeepseekOCRConfig) -> nn.Module:
    """The model on the meta device: shapes and names without allocating memory."""
    with torch.device("meta"), _skip_init():  # init on meta is pure overhead (seconds at full size)
        return _model_cls()(cfg)


def expected_published_shapes(cfg: DeepseekOCRConfig) -> dict[str, tuple[int, ...]]:
    """Published tensor name -> shape for ``cfg`` (from the model itself, on the meta device)."""
    sd = build_meta_model(cfg).state_dict()
    return {k: v[2] for k, v in _published_targets({k: t.shape for k, t in sd.items()}).items()}


# ------------------------------------------------------------------------------ export


def _model_config(model: nn.Module) -> ModelConfig | None:
    for attr in ("cfg", "config"):
        c = getattr(model, attr, None)
        if isinstance(c, (DeepseekOCRConfig, DeepseekOCR2Config)):
            return c
    return None


def export_checkpoint(
    model: nn.Module | Mapping[str, torch.Tensor],
    out_dir: str | Path,
    dtype: torch.dtype | None = torch.bfloat16,
    cfg: DeepseekOCRConfig | None = None,
    max_shard_bytes: int | None = 10 * 2**30,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write ``model`` (or a state dict) in the published layout + config.json to ``out_dir``.

    ``dtype=None`` keeps each tensor's dtype. Checkpoints up to ``max_shard_bytes`` (default
    10 GiB: the bf16 3.3B model, 6.7 GB, stays one file like the published one) are written as
    ``model.safetensors``; larger ones as ``model-0000i-of-0000n.safetensors`` + index json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, nn.Module):
        cfg = cfg or _model_config(model)
        sd = model.state_dict()
    else:
        sd = dict(model)
    if cfg is None:
        raise ValueError("export_checkpoint needs cfg= (the model has no .cfg/.config DeepseekOCRConfig)")
    pub = state_dict_to_published(sd)

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * (dtype.itemsize if dtype is not None else t.element_size())

    # Greedy sharding in name order (the published order groups a layer's tensors together).
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in pub.items():
        if max_shard_bytes and shards[-1] and size + nbytes(t) > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes(t)

    for stale in [out / SINGLE_FILE, out / INDEX_FILE, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)  # a previous export with another sharding must not linger
    files = [SINGLE_FILE] if len(shards) == 1 else [shard_file_name(i, len(shards)) for i in range(len(shards))]
    weight_map = {}
    for fname, names in zip(files, shards):
        tensors = {n: _saveable(pub[n], dtype) for n in names}
        weight_map.update(dict.fromkeys(names, fname))
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    if len(files) > 1:
        total = sum(nbytes(t) for t in pub.values())
        (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    stored = dtype or next((t.dtype for t in pub.values() if t.is_floating_point()), None)
    _write_config(out, cfg, stored, tokenizer)
    return out


def _write_config(out: Path, cfg: ModelConfig, dtype: torch.dtype | None,
                  tokenizer: str | Path | None) -> None:
    """config.json, and the tokenizer files when a tokenizer is given (both exports)."""
    (out / CONFIG_FILE).write_text(json.dumps(published_config(cfg, dtype), indent=2, ensure_ascii=False))
    if tokenizer is not None:
        from .tokenizer import copy_tokenizer_files

        copy_tokenizer_files(tokenizer, out)


def shard_file_name(index: int, total: int) -> str:
    return f"model-{index + 1:05d}-of-{total:05d}.safetensors"


def _saveable(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach()
    t = t.to("cpu", dtype=dtype) if dtype is not None else t.to("cpu")
    # Expert slices are views of one stacked tensor; safetensors refuses shared storage.
    return t.clone() if t.untyped_storage().nbytes() != t.nbytes else t.contiguous()


def write_checkpoint_shard(sd: Mapping[str, torch.Tensor], out_dir: str | Path, index: int, total: int,
                           dtype: torch.dtype | None = torch.bfloat16) -> Path:
    """File ``index`` of ``total`` of a sharded published-layout checkpoint, from a partial state
    dict (our names), e.g. one pipeline stage's parameters written by that stage's process.
    ``write_checkpoint_index`` then joins the files without loading them."""
    path = Path(out_dir) / shard_file_name(index, total)
    _stream_safetensors(state_dict_to_published(sd), path, dtype)
    return path


_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
              torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                      metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """A safetensors file whose bytes depend on its content only: tensors and metadata keys in
    sorted order. (``save_file`` writes the metadata in hash-map order, which changes from one
    call to the next: equal tensors, different bytes.)"""
    path = Path(path)
    _stream_safetensors(tensors, path, dtype, {"format": "pt", **(metadata or {})})
    return path


def _stream_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype | None,
                        metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time (cast / copied one at a time), so writing a
    3 GB stage costs one tensor of extra memory, not a second copy of the stage as
    ``save_file`` would (expert slices share storage and must be copied for it)."""
    names = sorted(tensors)
    meta = metadata or {"format": "pt"}
    header: dict = {"__metadata__": {k: str(meta[k]) for k in sorted(meta)}}
    offset = 0
    for n in names:
        t = tensors[n]
        dt = dtype if dtype is not None and t.is_floating_point() else t.dtype
        nbytes = t.numel() * dt.itemsize
        header[n] = {"dtype": _ST_DTYPES[dt], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for n in names:
            t = tensors[n].detach().to("cpu", dtype=dtype if dtype is not None and tensors[n].is_floating_point() else None)
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    tmp.replace(path)


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def write_checkpoint_index(out_dir: str | Path, cfg: DeepseekOCRConfig, total: int,
                           dtype: torch.dtype | None = torch.bfloat16,
                           tokenizer: str | Path | None = None) -> Path:
    """``model.safetensors.index.json`` + ``config.json`` for the ``total`` files written by
    ``write_checkpoint_shard``, from their headers only (no tensor is read). Raises unless the
    files hold every tensor of ``cfg``'s model exactly once, with the right shapes."""
    out = Path(out_dir)
    weight_map, size, shapes = {}, 0, {}
    for i in range(total):
        fname = shard_file_name(i, total)
        for name, info in _safetensors_header(out / fname).items():
            if name == "__metadata__":
                continue
            if name in weight_map:
                raise ValueError(f"{name} is in both {weight_map[name]} and {fname}")
            weight_map[name], shapes[name] = fname, tuple(info["shape"])
            size += info["data_offsets"][1] - info["data_offsets"][0]
    expected = expected_published_shapes(cfg)
    if shapes != expected:
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        wrong = sorted(n for n in set(shapes) & set(expected) if shapes[n] != expected[n])
        raise ValueError(f"shards in {out} do not form the model: missing {missing[:10]}, "
                         f"unexpected {extra[:10]}, wrong shapes {wrong[:10]}")
    for stale in (out / SINGLE_FILE, out / INDEX_FILE):
        stale.unlink(missing_ok=True)
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))
    _write_config(out, cfg, dtype, tokenizer)
    return out


# ------------------------------------------------------------------------------ import


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """Tensor name -> file, for a directory (single file or sharded + index) or a .safetensors path."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif (p / INDEX_FILE).is_file():
        weight_map = json.loads((p / INDEX_FILE).read_text())["weight_map"]
        return {n: p / f for n, f in weight_map.items()}
    elif (p / SINGLE_FILE).is_file():
        files = [p / SINGLE_FILE]
    else:
        files = sorted(f for f in p.glob("*.safetensors") if _SHARD_RE.match(f.name)) if p.is_dir() else []
        if not files:
            raise FileNotFoundError(
                f"no checkpoint at {p}: expected {SINGLE_FILE}, or model-0000i-of-0000n.safetensors "
                f"with {INDEX_FILE}, or a .safetensors file path"
            )
    names = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            names.update({n: f for n in h.keys()})
    return names


def _checkpoint_shapes(files: Mapping[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    by_file: dict[Path, list[str]] = {}
    for n, f in files.items():
        by_file.setdefault(f, []).append(n)
    for f, names in by_file.items():
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint shard {f} (listed in {INDEX_FILE}) does not exist")
        with safe_open(str(f), framework="pt") as h:
            keys = set(h.keys())
            for n in names:
                if n not in keys:
                    raise ValueError(f"{INDEX_FILE} maps {n} to {f.name}, which does not contain it")
                shapes[n] = tuple(h.get_slice(n).get_shape())
    return shapes


def _listing(kind: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {len(items)} {kind}:\n    {shown}{more}"


def _check_match(path, have: Mapping[str, tuple], targets: Mapping[str, tuple], strict: bool) -> tuple[list[str], list[str]]:
    """Compare checkpoint shapes with the model's; raise naming every problem (wrong shapes always).
    A tensor whose model name differs from its checkpoint name is listed under both."""
    def both(n: str) -> str:
        ours = targets[n][0] if n in targets else from_published_name(n)
        return n if ours == n or _PUBLISHED.match(n) else f"{n} (model: {ours})"

    missing = sorted(set(targets) - set(have))
    unexpected = sorted(set(have) - set(targets))
    wrong = sorted(f"{both(n)}: checkpoint {list(have[n])} vs model {list(targets[n][2])}"
                   for n in set(have) & set(targets) if tuple(have[n]) != targets[n][2])
    kinds = [("wrong-shaped", wrong)] + ([("missing", [both(n) for n in missing]),
                                          ("unexpected", [both(n) for n in unexpected])] if strict else [])
    parts = [_listing(k, v) for k, v in kinds if v]
    if parts:
        raise ValueError(f"checkpoint {path} does not match the model:\n" + "\n".join(parts))
    return missing, unexpected


@torch.no_grad()
def load_published_weights(model: nn.Module, path: str | Path, strict: bool = True,
                           prefix: str = "") -> tuple[list[str], list[str]]:
    """Load a published-layout checkpoint into an existing model (any device/dtype), in place.

    Shapes are checked for every tensor before anything is read; wrong shapes always raise.
    ``strict`` raises on missing or unexpected tensors too (names listed, with counts); with
    ``strict=False`` they are returned as ``(missing, unexpected)`` published names.
    ``prefix`` selects and strips a name prefix of the checkpoint, e.g. ``"model."`` to load
    the encoder of a full checkpoint into a ``DeepEncoder`` (with ``strict=False``).
    Values are cast to each parameter's dtype. Parameters still on the meta device (the other
    pipeline stages of a model materialised per stage) are checked but not read.
    """
    files = checkpoint_files(path)  # full names
    have = {n[len(prefix):]: s for n, s in _checkpoint_shapes(files).items() if n.startswith(prefix)}
    own = model.state_dict(keep_vars=True)
    targets = _published_targets({n: t.shape for n, t in own.items()})
    missing, unexpected = _check_match(path, have, targets, strict)

    by_file: dict[Path, list[str]] = {}
    for n in sorted(set(have) & set(targets)):
        if not own[targets[n][0]].is_meta:
            by_file.setdefault(files[prefix + n], []).append(n)
    for f, names in by_file.items():
        with TensorReader(f) as h:
            for n in names:
                ours, e, _ = targets[n]
                h.read_into(prefix + n, own[ours] if e is None else own[ours][e])
    return missing, unexpected


_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


class TensorReader:
    """Reads named tensors of one safetensors file with plain ``readinto`` calls, straight into
    the destination tensor when dtype and layout allow (else through one temporary tensor).

    Unlike ``safe_open(...).get_tensor`` (memory-mapped), the file's pages never count as this
    process's resident memory, so loading a 3 GB pipeline stage costs 3 GB, not 6, and a rank
    touches nothing of the file but the header and its own tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.f = open(self.path, "rb")  # noqa: SIM115 - closed by close() / __exit__
        n = int.from_bytes(self.f.read(8), "little")
        self.header = json.loads(self.f.read(n))
        self.data_start = 8 + n

    def keys(self) -> list[str]:
        return [k for k in self.header if k != "__metadata__"]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read_into(self, name: str, dst: torch.Tensor) -> None:
        """Copy tensor ``name`` into ``dst`` (same shape; cast and moved as needed)."""
        info = self.header[name]
        dtype, shape = _TORCH_DTYPES[info["dtype"]], tuple(info["shape"])
        if tuple(dst.shape) != shape:
            raise ValueError(f"{self.path}: {name} has shape {list(shape)}, the destination {list(dst.shape)}")
        begin, end = info["data_offsets"]
        direct = dst.dtype == dtype and dst.device.type == "cpu" and dst.is_contiguous()
        buf = dst.detach() if direct else torch.empty(shape, dtype=dtype)
        view = buf.reshape(-1).view(torch.uint8).numpy()
        if view.nbytes != end - begin:
            raise ValueError(f"{self.path}: {name} holds {end - begin} bytes, {list(shape)} {dtype} needs {view.nbytes}")
        self.f.seek(self.data_start + begin)
        if view.nbytes and self.f.readinto(memoryview(view)) != view.nbytes:
            raise ValueError(f"{self.path}: file ends inside tensor {name}")
        if not direct:
            dst.copy_(buf)  # casts dtype and moves device

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def import_checkpoint(path: str | Path, cfg: DeepseekOCRConfig | None = None, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str | None = None) -> nn.Module:
    """Build ``DeepseekOCRForCausalLM`` from a checkpoint directory and load it strictly.

    ``cfg`` defaults to the checkpoint's config.json (exact if written by ``export_checkpoint``,
    else from the published fields). ``dtype=None`` keeps the stored dtype (config.json's
    ``torch_dtype``; float32 if absent), so export -> import is bit-identical. The checkpoint
    is validated against the model's expected shapes (meta device) before anything is built.
    """
    p = Path(path)
    cfg_file = (p if p.is_dir() else p.parent) / CONFIG_FILE  # path may be a .safetensors file
    cj = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    if cfg is None:
        cfg = load_config(cfg_file)
    if isinstance(dtype, str):
        dtype = _DTYPES[dtype.removeprefix("torch.")]
    if dtype is None:
        dtype = _DTYPES.get(cj.get("torch_dtype", cj.get("dtype", "float32")), torch.float32)

    # Fail fast, before allocating anything: compare with the model built on the meta device.
    meta = build_meta_model(cfg)
    meta_sd = meta.state_dict()
    _check_match(p, _checkpoint_shapes(checkpoint_files(p)),
                 _published_targets({n: t.shape for n, t in meta_sd.items()}), strict=True)

    # Allocate parameters directly in the stored dtype (one model copy of memory: 6.7 GB for
    # the bf16 3.3B model instead of 13.3 GB fp32 + a cast) unless a non-persistent floating
    # buffer (computed in __init__, not loaded) would lose precision that way.
    float_buffers = [n for n, b in meta.named_buffers() if n not in meta_sd and b.is_floating_point()]
    build_dtype = dtype if not float_buffers else torch.float32
    del meta, meta_sd
    with torch.device(device), _skip_init(), _default_dtype(build_dtype):
        model = _model_cls()(cfg)
    persistent = set(model.state_dict(keep_vars=True))
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name in persistent and t.is_floating_point() and t.dtype != dtype:
            t.data = t.data.to(dtype)
    load_published_weights(model, p, strict=True)
    return model.eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


__all__ = [
    "state_dict_to_published", "published_to_state_dict", "expected_published_shapes",
    "build_meta_model", "published_config", "config_from_json", "load_config",
    "export_checkpoint", "checkpoint_files", "load_published_weights", "import_checkpoint",
    "write_checkpoint_shard", "write_checkpoint_index",
]
