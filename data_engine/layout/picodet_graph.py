"""Exact rewrites of the shipped PicoDet graph (`layout_cdla.onnx`) that make it cheaper to run on
CPU with onnxruntime, applied in memory when the detector loads (the file is never changed).

* Hard-swish. Paddle's exporter writes each of LCNet's 94 hard-swish activations as four ops,
  ``x * clip(x + 3, 0, 6) / 6``. onnxruntime fuses none of them into the convolutions and converts
  every feature map to and from its blocked (NCHWc) layout around each one: measured on one core,
  convolutions took 131 ms of a 271 ms run, the element-wise ops 90 ms and the layout
  conversions 45 ms. As one ``HardSwish`` op (opset 14) each is fused into its convolution: 154 ms
  a run. The same function, so the outputs agree to fp32 rounding (max abs diff 5e-6).
* Input. The graph takes the page as it is rendered, (1, H, W, 3) uint8 RGB; the cast, the layout
  change, the RGB -> BGR order the model was trained with and the ImageNet normalisation run inside
  the graph (the BGR order and the division by 255 * std folded into the first convolution's
  weights; the mean subtracted before it, so its zero padding still pads with the mean as before).
  NumPy did this in 16-31 ms a page.

`optimized_model(path)` returns the rewritten model as bytes for `onnxruntime.InferenceSession`;
`tests/test_fine_labels.py` checks that it gives the original model's detections. A model file
the input rewrite does not fit is run as it is, preprocessed in NumPy (`PicoDetDetector`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper as nh

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, in the BGR input's order
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HARDSWISH_OPSET = 14


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {n.output[0]: nh.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}


def fuse_hardswish(model: onnx.ModelProto) -> int:
    """Replace each ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` chain by ``HardSwish(x)``; the number
    replaced."""
    g = model.graph
    const = _constants(g)
    users = defaultdict(list)
    for n in g.node:
        for i in n.input:
            users[i].append(n)

    def scalar(name: str) -> float | None:
        v = const.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def only_user(name: str, op: str):
        u = users[name]
        return u[0] if len(u) == 1 and u[0].op_type == op else None

    # a node's first output names it (unique in an ONNX graph) -> its replacement (None: dropped)
    replace: dict[str, onnx.NodeProto | None] = {}
    for add in g.node:
        if add.op_type != "Add" or len(add.input) != 2 or scalar(add.input[1]) != 3.0:
            continue
        x = add.input[0]
        clip = only_user(add.output[0], "Clip")
        if clip is None or [scalar(i) for i in clip.input[1:3]] != [0.0, 6.0]:
            continue
        mul = only_user(clip.output[0], "Mul")
        if mul is None or x not in mul.input:
            continue
        div = only_user(mul.output[0], "Div")
        if div is None or scalar(div.input[1]) != 6.0:
            continue
        replace.update({add.output[0]: None, clip.output[0]: None, mul.output[0]: None,
                        div.output[0]: helper.make_node("HardSwish", [x], [div.output[0]], name=f"{div.name}.hardswish")})
    if replace:
        # the replacement takes the place of the chain's last op, after x and before its users
        nodes = [replace.get(n.output[0], n) if n.output else n for n in g.node]
        del g.node[:]
        g.node.extend(n for n in nodes if n is not None)
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, HARDSWISH_OPSET)
    return sum(r is not None for r in replace.values())


def fold_input(model: onnx.ModelProto) -> None:
    """Make the graph take (1, H, W, 3) uint8 RGB: cast, NCHW, mean subtracted, and the first
    convolution's weights take the BGR order and the 1 / (255 * std) scale."""
    g = model.graph
    (inp,) = g.input
    name = inp.name
    users = [n for n in g.node if name in n.input]
    if len(users) != 1 or users[0].op_type != "Conv":
        raise ValueError(f"expected one Conv reading {name!r}, found {[n.op_type for n in users]}")
    conv = users[0]
    wname = conv.input[1]
    (wnode,) = [n for n in g.node if n.op_type == "Constant" and n.output[0] == wname]
    w = nh.to_array(wnode.attribute[0].t).astype(np.float32)  # (O, 3, k, k), input channels B, G, R
    w = w / (255.0 * STD)[None, :, None, None]  # the normalisation's scale, per BGR channel
    w = w[:, ::-1].copy()  # input channels now R, G, B
    wnode.attribute[0].t.CopyFrom(nh.from_array(w, wname))
    mean_rgb = (255.0 * MEAN[::-1]).reshape(1, 3, 1, 1).astype(np.float32)
    h, wd = (d.dim_value for d in inp.type.tensor_type.shape.dim[2:])
    pre = [
        helper.make_node("Cast", [f"{name}_u8"], [f"{name}_f32"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Transpose", [f"{name}_f32"], [f"{name}_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Constant", [], [f"{name}_mean"], value=nh.from_array(mean_rgb, f"{name}_mean")),
        helper.make_node("Sub", [f"{name}_nchw", f"{name}_mean"], [f"{name}_centred"]),
    ]
    conv.input[0] = f"{name}_centred"
    nodes = pre + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(f"{name}_u8", onnx.TensorProto.UINT8, [1, h, wd, 3]))


def optimized_model(path: str | Path) -> bytes:
    """The model with both rewrites, serialised. ValueError when its input does not feed one
    convolution (a graph other than the shipped one: the caller runs it as it is)."""
    model = onnx.load(str(path))
    fuse_hardswish(model)  # none found (a graph exported with HardSwish already): nothing to do
    fold_input(model)
    onnx.checker.check_model(model)
    return model.SerializeToString()
