"""PP-OCRv4 text-line recognizer (mobile) as a PyTorch module, weights read from PaddleOCR's ONNX export.

Reference: PaddleOCR's PP-OCRv4 recognition model ``ch_PP-OCRv4_rec`` (config
``configs/rec/PP-OCRv4/ch_PP-OCRv4_rec.yml``): backbone PP-LCNetV3 (scale 0.95, rec strides),
neck ``SequenceEncoder`` with ``EncoderWithSVTR`` (dims 120, depth 2, 8 heads, local conv 1x3), head
``CTCHead`` (one Linear over 6,625 classes). The file read here is the ONNX export that ships inside
the ``rapidocr-onnxruntime==1.4.4`` wheel (``models/ch_PP-OCRv4_rec_infer.onnx``): an inference
("deploy") graph, so

- every PP-LCNetV3 ``LearnableRepLayer`` is already re-parameterised into one conv with a bias
  (its branches and their BatchNorms folded in); ``RepConv`` below is that deploy form,
- the backbone ends with the inference pooling ``avg_pool2d(kernel=(3, 2))`` (training in PaddleOCR
  used ``adaptive_avg_pool2d(1, 40)`` on fixed 320-px crops; here the variable-width inference
  pooling is kept for fine-tuning too, so the model trains as it reads),
- BatchNorm stays only in the stem and the SVTR neck (6 layers, ``frozen_bn``): their running
  statistics are the ones the model was trained with on large batches. During fine-tuning they are
  kept in eval mode (``PPOCRRec.train`` leaves them in eval): batch statistics of 8-16 line crops
  would drift from them and break the pretrained features; their affine weights still train.

Input: ``(B, 3, 48, W)`` BGR crops (the channel order PaddleOCR was trained with), scaled to
[-1, 1] (``x / 127.5 - 1``), right-padded with 0; output: CTC logits ``(B, W // 8, V)`` (class 0 is
the CTC blank, the last class is the space; ``PPOCRRec.charset`` holds the characters).
Weights are the ONNX file's Constant nodes, assigned in graph order to the module's parameters in
registration order (each shape checked): ``load_onnx_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PPOCR_REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"
BLANK = "<blank>"  # CTC class 0


@dataclass
class PPOCRRecConfig:
    """PP-OCRv4 mobile rec, as exported (channels after PP-LCNetV3's 0.95 scale and make_divisible)."""

    stem_channels: int = 16
    # (kernel, in, out, stride (h, w), squeeze-excite) per LCNetV3 block, blocks2..blocks6 flattened
    blocks: tuple = ((3, 16, 32, (1, 1), False),
                     (3, 32, 64, (1, 1), False), (3, 64, 64, (1, 1), False),
                     (3, 64, 128, (2, 1), False), (3, 128, 128, (1, 1), False),
                     (3, 128, 240, (1, 2), False), (5, 240, 240, (1, 1), False), (5, 240, 240, (1, 1), False),
                     (5, 240, 240, (1, 1), False), (5, 240, 240, (1, 1), False),
                     (5, 240, 480, (2, 1), True), (5, 480, 480, (1, 1), True),
                     (5, 480, 480, (2, 1), False), (5, 480, 480, (1, 1), False))
    neck_dim: int = 120         # SVTR hidden size
    neck_depth: int = 2
    neck_heads: int = 8
    mlp_ratio: float = 2.0
    height: int = 48            # input crop height
    num_classes: int = 6625     # blank + 6,623 characters + space
    charset: list[str] = field(default_factory=list)
    # leading backbone blocks that still hold the shipped weights (fine-tuning kept them frozen);
    # None: the whole backbone. Readers cache these blocks' output (train/flywheel/ppocr.py).
    shipped_blocks: int | None = None


class LearnableAffine(nn.Module):
    """PP-LCNetV3 LearnableAffineBlock: ``scale * x + bias`` with two learnt scalars."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.scale * x + self.bias


class RepConv(nn.Module):
    """Deploy form of PP-LCNetV3's LearnableRepLayer: conv (branches folded) -> affine -> hardswish -> affine."""

    def __init__(self, cin: int, cout: int, k: int, stride=(1, 1), groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)
        self.lab = LearnableAffine()
        self.act_lab = LearnableAffine()

    def forward(self, x):
        return self.act_lab(F.hardswish(self.lab(self.conv(x))))


class SqueezeExcite(nn.Module):
    """PP-LCNetV3 SE: global pool -> 1x1 (C/4) -> ReLU -> 1x1 (C) -> hardsigmoid gate."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(c, c // reduction, 1)
        self.expand = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x):
        g = F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * g


class LCNetV3Block(nn.Module):
    """Depthwise k x k RepConv (with the stride) -> optional SE -> pointwise RepConv."""

    def __init__(self, k: int, cin: int, cout: int, stride, se: bool):
        super().__init__()
        self.dw = RepConv(cin, cin, k, stride=stride, groups=cin)
        self.se = SqueezeExcite(cin) if se else nn.Identity()
        self.pw = RepConv(cin, cout, 1)

    def forward(self, x):
        return self.pw(self.se(self.dw(x)))


def frame_pool(x: torch.Tensor) -> torch.Tensor:
    """The backbone's last step, avg-pool (3, 2): (B, 480, 3, W/4) -> (B, 480, 1, W/8), one column per CTC frame."""
    return F.avg_pool2d(x, (3, 2), (3, 2))


class PPLCNetV3(nn.Module):
    """Backbone: stem conv3x3/2 + BN, 14 LCNetV3 blocks, then avg-pool (3, 2): (B, 3, 48, W) -> (B, 480, 1, W/8)."""

    def __init__(self, cfg: PPOCRRecConfig):
        super().__init__()
        self.stem = nn.Conv2d(3, cfg.stem_channels, 3, stride=2, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(cfg.stem_channels)
        self.blocks = nn.Sequential(*[LCNetV3Block(*b) for b in cfg.blocks])

    def front(self, x, n: int):
        """The stem and the first ``n`` blocks: (B, 3, 48, W) -> (B, C, H, W/4) for n >= 6."""
        return self.blocks[:n](self.stem_bn(self.stem(x)))

    def rest(self, f, n: int):
        """Blocks ``n`` on and the pooling: ``front(x, n)`` -> (B, 480, 1, W/8)."""
        return frame_pool(self.blocks[n:](f))

    def forward(self, x):
        return self.rest(self.front(x, len(self.blocks)), len(self.blocks))


class ConvBNSwish(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1)):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=(kernel[0] // 2, kernel[1] // 2), bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)).softmax(-1)                         # (B, h, N, N)
        return self.proj((att @ v).transpose(1, 2).reshape(B, N, D))       # (B, N, D)


class SVTRBlock(nn.Module):
    """Pre-norm global-attention transformer block (LayerNorm eps 1e-5, swish MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.silu(self.fc1(self.norm2(x))))


class SVTRNeck(nn.Module):
    """EncoderWithSVTR: local conv 1x3 -> 1x1 -> 2 SVTR blocks -> 1x1 back -> concat shortcut -> 1x3 -> 1x1."""

    def __init__(self, cin: int, cfg: PPOCRRecConfig):
        super().__init__()
        d = cfg.neck_dim
        self.conv1 = ConvBNSwish(cin, cin // 8, (1, 3))
        self.conv2 = ConvBNSwish(cin // 8, d)
        self.blocks = nn.ModuleList([SVTRBlock(d, cfg.neck_heads, cfg.mlp_ratio) for _ in range(cfg.neck_depth)])
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.conv3 = ConvBNSwish(d, cin)
        self.conv4 = ConvBNSwish(2 * cin, cin // 8, (1, 3))
        self.conv1x1 = ConvBNSwish(cin // 8, d)

    def forward(self, x):                       # (B, C, 1, T)
        h = self.conv2(self.conv1(x))           # (B, d, 1, T)
        B, d, H, W = h.shape
        z = h.flatten(2).transpose(1, 2)        # (B, T, d)
        for blk in self.blocks:
            z = blk(z)
        z = self.norm(z).reshape(B, H, W, d).permute(0, 3, 1, 2)  # (B, d, 1, T)
        z = self.conv1x1(self.conv4(torch.cat([x, self.conv3(z)], dim=1)))
        return z.squeeze(2).transpose(1, 2)     # (B, T, d)


class PPOCRRec(nn.Module):
    """PP-LCNetV3 -> SVTR neck -> CTC head; ``forward`` gives logits (B, T, V) (softmax = the ONNX output)."""

    def __init__(self, cfg: PPOCRRecConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or PPOCRRecConfig()
        self.backbone = PPLCNetV3(cfg)
        self.neck = SVTRNeck(cfg.blocks[-1][2], cfg)
        self.head = nn.Linear(cfg.neck_dim, cfg.num_classes)
        self.charset: list[str] = list(cfg.charset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))  # (B, W/8, V)

    def train(self, mode: bool = True):
        """Train mode everywhere except BatchNorm, whose running statistics stay frozen (module docstring)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def extend_charset(self, chars, init: dict[str, str] | None = None) -> list[str]:
        """Append output rows for the characters of ``chars`` the charset lacks; returns those added.

        A new row copies the row of ``init[c]`` (a look-alike already in the charset, e.g. Cyrillic
        'р' -> Latin 'p') when given, else the mean of the non-blank rows; its bias is the mean
        non-blank bias minus 2 (a new class starts below the known ones, so it does not steal
        frames before training). The old rows stay bit-identical.
        """
        init = init or {}
        new = [c for c in dict.fromkeys(chars) if c not in set(self.charset)]
        if not new:
            return []
        old = self.head
        index = {c: i for i, c in enumerate(self.charset)}
        w, b = old.weight.data, old.bias.data
        mean_w, mean_b = w[1:].mean(0), b[1:].mean()
        rows_w = torch.stack([w[index[init[c]]] if init.get(c) in index else mean_w for c in new])
        rows_b = torch.stack([b[index[init[c]]] if init.get(c) in index else mean_b - 2.0 for c in new])
        head = nn.Linear(old.in_features, old.out_features + len(new)).to(w.device, w.dtype)
        head.weight.data = torch.cat([w, rows_w])
        head.bias.data = torch.cat([b, rows_b])
        self.head = head
        self.charset += new
        self.cfg.num_classes = head.out_features
        return new


# ---------------------------------------------------------------------------------- ONNX weights
def ppocr_rec_path() -> Path:
    """The recognizer ONNX file inside the installed rapidocr-onnxruntime wheel."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise FileNotFoundError("rapidocr_onnxruntime is not installed: pip install rapidocr-onnxruntime==1.4.4 "
                                f"(it ships {PPOCR_REC_FILE})") from None
    p = Path(rapidocr_onnxruntime.__file__).parent / "models" / PPOCR_REC_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: reinstall rapidocr-onnxruntime==1.4.4")
    return p


def _onnx_weights(model_proto) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
    """The named weight Constants in the order the graph first uses them, and the charset."""
    from onnx import numpy_helper

    consts = {}
    for n in model_proto.graph.node:
        if n.op_type == "Constant" and not n.output[0].startswith(("p2o.", "fill_constant")):
            consts[n.output[0]] = torch.from_numpy(numpy_helper.to_array(n.attribute[0].t).copy())
    for t in model_proto.graph.initializer:
        consts[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
    ordered, seen = [], set()
    for n in model_proto.graph.node:
        for name in n.input:
            if name in consts and name not in seen:
                seen.add(name)
                ordered.append((name, consts[name]))
    meta = {p.key: p.value for p in model_proto.metadata_props}
    chars = meta.get("character", "").split("\n") if "character" in meta else []
    return ordered, ([BLANK] + chars + [" "]) if chars else []


def load_onnx_weights(model: PPOCRRec, onnx_path: str | Path | None = None) -> PPOCRRec:
    """Copy the ONNX file's weights into ``model`` (graph order -> registration order, shapes checked)."""
    import onnx

    ordered, charset = _onnx_weights(onnx.load(str(onnx_path or ppocr_rec_path())))
    targets = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(targets) != len(ordered):
        raise ValueError(f"the ONNX graph has {len(ordered)} weight tensors, the module {len(targets)}: "
                         "not the PP-OCRv4 mobile rec export")
    state = {}
    for (key, dst), (name, src) in zip(targets, ordered):
        if src.dim() == 2 and name.startswith("linear"):
            src = src.t()  # Paddle Linear stores (in, out)
        if src.numel() != dst.numel() or (src.dim() == dst.dim() and src.shape != dst.shape):
            raise ValueError(f"ONNX weight {name} {tuple(src.shape)} does not fit {key} {tuple(dst.shape)}")
        state[key] = src.reshape(dst.shape).to(dst.dtype)
    model.load_state_dict(state, strict=False)
    if charset:
        if len(charset) != model.head.out_features:
            raise ValueError(f"the model's character metadata gives {len(charset)} classes, the head has "
                             f"{model.head.out_features}")
        model.charset = charset
    return model


def ppocr_rec_from_onnx(onnx_path: str | Path | None = None) -> PPOCRRec:
    """PP-OCRv4 rec with the shipped weights and charset, in eval mode."""
    return load_onnx_weights(PPOCRRec(), onnx_path).eval()


# ---------------------------------------------------------------------------------- pre/post-processing
def preprocess(images, height: int = 48, min_width: int = 320, width_multiple: int = 1) -> torch.Tensor:
    """RGB line crops (PIL or HxWx3 uint8 arrays) -> (B, 3, height, W) as PaddleOCR/RapidOCR feed them:
    resized to ``height`` keeping the aspect (bilinear, cv2), BGR, x/127.5-1, right-padded with 0 to
    the batch's widest crop (at least ``min_width``), rounded up to ``width_multiple`` (a few batch
    shapes instead of one per width: oneDNN caches kernels per input shape, and a long run over
    every width grows the process by gigabytes)."""
    import math

    import cv2
    import numpy as np

    arrs = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    widths = [max(1, math.ceil(height * a.shape[1] / a.shape[0])) for a in arrs]
    W = -(-max([min_width] + widths) // width_multiple) * width_multiple
    out = torch.zeros(len(arrs), 3, height, W)
    for i, (a, w) in enumerate(zip(arrs, widths)):
        r = cv2.resize(a[:, :, ::-1].copy(), (w, height)).astype("float32")  # (h, w, 3) BGR
        out[i, :, :, :w] = torch.from_numpy(r).permute(2, 0, 1) / 255.0 / 0.5 - 1.0
    return out


def ctc_greedy(logits: torch.Tensor, charset: list[str]) -> list[tuple[str, float, float]]:
    """Greedy CTC decoding: (text, mean, min) over the emitted characters' probabilities (both 0 for
    an empty read), per row of ``logits`` (B, T, V)."""
    probs = logits.float().softmax(-1)
    p, idx = probs.max(-1)  # (B, T)
    out = []
    for pr, ix in zip(p.tolist(), idx.tolist()):
        chars, ps, prev = [], [], -1
        for c, q in zip(ix, pr):
            if c != prev and c != 0:
                chars.append(charset[c])
                ps.append(q)
            prev = c
        out.append(("".join(chars), sum(ps) / len(ps) if ps else 0.0, min(ps) if ps else 0.0))
    return out
