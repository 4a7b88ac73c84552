"""Stage 1 (DeepEncoder + compact OPT LM) under DeepSpeed ZeRO, single process on gloo.

Data: a few real page images (text drawn with PIL) written as webdataset shards in the
contract format, a byte-level BPE trained on their labels, and the real loader (train/data.py).
Checks: loss falls on a fixed batch; kill/resume reproduces the uninterrupted losses from
step k+1 on; the saved encoder loads into a stage-2 DeepseekOCRForCausalLM with equal values;
the lr schedules; the DeepSpeed config builder's batch arithmetic.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from models.prompts import PROMPT_COARSE
from models.tokenizer import SPECIAL_TOKENS

WORDS = ("ocr model page text line table figure vision token encoder decoder train data "
         "stage pipeline layout title caption footer header column paragraph").split()


def _label(rng: random.Random) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8)))
                     for _ in range(rng.randint(2, 4)))


def _page(text: str) -> Image.Image:
    img = Image.new("RGB", (360, 480), "white")
    ImageDraw.Draw(img).multiline_text((20, 20), text, fill="black", spacing=8)
    return img


def write_tiny_shards(out: Path, n: int = 16, seed: int = 0) -> tuple[str, list[str]]:
    """n pages in two shards (contract format); returns (glob, label texts)."""
    import io

    from data_engine.shards import encode_meta, open_shard_writer

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    texts = []
    with open_shard_writer(str(out / "tiny-%06d.tar"), max_count=max(1, n // 2)) as w:
        for i in range(n):
            text = _label(rng)
            texts.append(text)
            buf = io.BytesIO()
            img = _page(text)
            img.save(buf, format="PNG")
            meta = {"doc_id": f"{i:016x}", "source_path": f"synthetic/{i}.pdf", "page": 0,
                    "num_pages": 1, "lang": "eng", "script": "Latn", "dpi": 72,
                    "page_size": [360.0, 480.0], "image_size": list(img.size),
                    "source": "synthetic", "data_source": "ocr",
                    "labels": {"coarse": {"prompt": PROMPT_COARSE, "text": text}}}
            w.write({"__key__": f"{i:016x}_00000", "png": buf.getvalue(), "json": encode_meta(meta)})
    return str(out / "tiny-*.tar"), texts


def train_tiny_tokenizer(out: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts + [PROMPT_COARSE], trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1_data")
    shards, texts = write_tiny_shards(root / "shards")
    tok = train_tiny_tokenizer(root / "tok", texts)
    return {"shards": shards, "tokenizer": str(tok)}


def stage1_cfg(tiny_data, out_dir: Path, *extra: str, **train):
    from train.api import compose

    over = [
        f"model.tokenizer={tiny_data['tokenizer']}",
        f"data.shards=[{tiny_data['shards']}]",
        "data.seq_len=160", "data.num_workers=0",
        "data.mode_weights={tiny: 1.0, small: 0.0, base: 0.0, large: 0.0, gundam: 0.0, gundam_m: 0.0}",
        "logging=disabled", f"train.out_dir={out_dir}",
    ]
    over += [f"train.{k}={v}" for k, v in train.items()]
    return compose("smoke", over + list(extra))


def test_resume_reproduces_losses_and_encoder_loads_into_stage2(tiny_data, tmp_path):
    import shutil

    from train.stage1 import run_stage1

    # uninterrupted run: 4 steps, checkpoints after steps 2 and 4. The LM's dropout (the published
    # group's 0.1) draws from the torch RNG every step: resume must leave that RNG as the run left it
    dropout = "model.stage1_lm.dropout=0.1"
    full = run_stage1(stage1_cfg(tiny_data, tmp_path / "full", dropout, steps=4, save_every=2, resume="null",
                                  micro_batch_size=1, global_batch_size=2))  # grad accumulation 2
    assert full["steps"] == 4 and len(full["losses"]) == 4
    # a run killed after step 2 leaves exactly the step-2 checkpoint on disk: rebuild that
    # state in a fresh out_dir and let the trainer resume it (train.resume=auto)
    ckpt = tmp_path / "killed" / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", ckpt / "step_00000002")
    (ckpt / "latest").write_text("step_00000002")
    resumed = run_stage1(stage1_cfg(tiny_data, tmp_path / "killed", dropout, steps=4, save_every=2, resume="auto",
                                     micro_batch_size=1, global_batch_size=2))
    assert resumed["steps"] == 4 and len(resumed["losses"]) == 2  # steps 3 and 4 only
    # same data, same RNG, same optimizer/scheduler state -> the same losses, bit for bit
    assert resumed["losses"] == full["losses"][2:]
    assert full["losses"][2] != full["losses"][1]  # steps differ (a stuck run would also "match")

    # the stage-1 encoder loads into the stage-2 model: names match, values equal
    from safetensors.torch import load_file

    from models.config import get_preset
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    enc = load_file(full["encoder_path"])
    assert any(k.startswith("sam_model.") for k in enc) and any(k.startswith("vision_model.") for k in enc)
    assert {"projector.layers.weight", "image_newline", "view_seperator"} <= set(enc)  # tiny: widths match
    model = DeepseekOCRForCausalLM(get_preset("tiny"))
    missing, unexpected = model.model.load_state_dict(enc, strict=False)
    assert not unexpected
    assert not [k for k in missing if k.startswith(("sam_model.", "vision_model.", "projector."))]
    sd = model.model.state_dict()
    for k, v in enc.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)

    # a curriculum step (model.stage1_from) starts from the whole stage-1 model of a finished run:
    # with lr 1e-30 its one step changes nothing measurable, so its checkpoint is the earlier run's last one
    from train.eval.loading import latest_module_state

    cont = stage1_cfg(tiny_data, tmp_path / "next", steps=1, save_every=1, resume="null",
                      micro_batch_size=1, global_batch_size=1)
    cont.model.stage1_from, cont.optim.lr = str(tmp_path / "full"), 1e-30
    run_stage1(cont)
    before, _ = latest_module_state(tmp_path / "full" / "checkpoints")
    after, _ = latest_module_state(tmp_path / "next" / "checkpoints")
    assert before.keys() == after.keys()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=1e-20)
    other = stage1_cfg(tiny_data, tmp_path / "other", steps=1, resume="null", micro_batch_size=1, global_batch_size=1)
    other.model.stage1_from, other.model.stage1_lm.hidden_size = str(tmp_path / "full"), 32
    with pytest.raises(ValueError, match="stage1_from"):
        run_stage1(other)


def test_loss_decreases_on_fixed_batch(tiny_data, tmp_path):
    """Overfit one packed batch through the DeepSpeed engine (ZeRO-2, fp32, gloo)."""
    import deepspeed

    from models.tokenizer import load_tokenizer
    from train.data import build_train_loader
    from train.deepspeed_config import build_ds_config
    from train.distributed import init_distributed
    from train.lr_schedule import build_lr_scheduler
    from train.optimizer import build_optimizer
    from train.stage1 import build_stage1_model

    cfg = stage1_cfg(tiny_data, tmp_path, steps=12)
    cfg.deepspeed.zero_stage, cfg.optim.warmup_steps, cfg.optim.lr = 2, 0, 5e-3
    init_distributed(cfg)
    torch.manual_seed(0)
    tok = load_tokenizer(cfg.model.tokenizer)
    model = build_stage1_model(cfg, tok.vocab_size, seq_len=160, special_ids={
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id, "image_token_id": tok.image_token_id})
    opt = build_optimizer(model, cfg.optim)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=build_ds_config(cfg, 1),
                                      lr_scheduler=build_lr_scheduler(opt, cfg.optim, 12))
    batch = next(iter(build_train_loader(cfg.data, tok, seq_len=160, micro_batch_size=2, seed=0)))
    assert len(batch.images) >= 2 and batch.num_loss_tokens > 10
    sam_w0 = model.encoder.sam_model.patch_embed.proj.weight.detach().clone()
    losses = []
    for _ in range(12):
        loss, _, _ = engine(input_ids=batch.input_ids, images=batch.images, labels=batch.labels,
                            position_ids=batch.position_ids, segment_ids=batch.segment_ids)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0] and losses[-1] == min(losses), losses
    # the loss reaches the vision tower: SAM's first layer was updated
    assert not torch.equal(model.encoder.sam_model.patch_embed.proj.weight.detach(), sam_w0)


def test_packed_mask_blocks_cross_segment_attention():
    from train.stage1 import packed_causal_mask

    seg = torch.tensor([[1, 1, 2, 2, 0]])
    allowed = packed_causal_mask(seg, torch.float32)[0, 0] == 0
    expect = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0],
                           [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expect)


def test_lr_schedules():
    from train.lr_schedule import lr_multiplier

    cos = {"schedule": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1}
    assert lr_multiplier(0, cos, 110) == pytest.approx(0.1)
    assert lr_multiplier(9, cos, 110) == pytest.approx(1.0)
    assert lr_multiplier(60, cos, 110) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_multiplier(110, cos, 110) == pytest.approx(0.1)
    step = {"schedule": "step", "warmup_steps": 0, "step_milestones": [0.5, 80], "step_gamma": 0.1}
    assert [lr_multiplier(s, step, 100) for s in (0, 49, 50, 79, 80)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier(0, {"schedule": "linear"}, 10)


def test_encoder_gets_its_own_lr_and_warmup_and_defaults_keep_two_groups():
    from train.lr_schedule import build_lr_scheduler
    from train.optimizer import build_optimizer, param_part
    from train.stage1 import build_stage1_model

    model = build_stage1_model({"model": {"preset": "tiny"}}, 64, special_ids=dict(
        bos_token_id=0, eos_token_id=1, pad_token_id=2, image_token_id=3))
    parts = {n: param_part(n) for n, _ in model.named_parameters()}
    assert parts["encoder.sam_model.patch_embed.proj.weight"] == "sam"
    assert parts["encoder.vision_model.embeddings.position_embedding.weight"] == "encoder"
    assert parts["encoder.projector.layers.weight"] == parts["encoder.image_newline"] == "encoder"
    assert parts["lm.model.decoder.embed_tokens.weight"] == "lm"
    assert param_part("1.projector.layers.weight") == "encoder"  # pipeline stage names too

    # defaults (the paper): one lr for all, two groups (decay / no decay) on every pipeline rank
    opt = build_optimizer(model, {"lr": 1e-3})
    assert len(opt.param_groups) == 2 and {g["lr"] for g in opt.param_groups} == {1e-3}

    cfg = {"lr": 1e-3, "encoder_lr_scale": 0.1, "sam_lr_scale": 0.5, "warmup_steps": 2,
           "encoder_warmup_steps": 4, "schedule": "constant"}
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["encoder.sam_model.patch_embed.proj.weight"])] == pytest.approx(5e-5)
    assert lr_of[id(named["encoder.projector.layers.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(named["lm.model.decoder.embed_tokens.weight"])] == pytest.approx(1e-3)
    assert len(opt.param_groups) == 6  # 3 parts x (decay, no decay)
    sched = build_lr_scheduler(opt, cfg, total_steps=10)
    lrs = []
    for _ in range(4):
        lrs.append({g["part"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    # LM: 2 warm-up steps; encoder: 4
    assert [r["lm"] for r in lrs] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    assert [r["encoder"] for r in lrs] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])


def test_ds_config_batch_arithmetic():
    from train.deepspeed_config import build_ds_config

    cfg = {"train": {"micro_batch_size": 1, "global_batch_size": 640, "pp": 4},
           "deepspeed": {"zero_stage": 1, "dtype": "bf16", "extra": {"zero_optimization": {"reduce_bucket_size": 5}}},
           "optim": {"grad_clip": 1.0}}
    ds = build_ds_config(cfg, world_size=160)  # paper stage 2: 160 GPUs, PP 4 -> DP 40
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (640, 1, 16)
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and "pipeline" in ds
    assert ds["zero_optimization"]["stage"] == 1 and ds["zero_optimization"]["reduce_bucket_size"] == 5
    with pytest.raises(ValueError, match="multiple"):
        build_ds_config({**cfg, "train": {**cfg["train"], "global_batch_size": 100}}, world_size=160)
    with pytest.raises(ValueError, match="ZeRO"):
        build_ds_config({**cfg, "deepspeed": {"zero_stage": 2}}, world_size=160)


def test_text_only_batch_gives_every_parameter_a_gradient():
    """A text-only micro-batch still yields (zero) encoder gradients, so ZeRO-1/2 DP ranks
    reduce the same parameter buckets whether or not their micro-batch had images; and the
    loss never predicts across a packed-segment boundary."""
    from train.stage1 import build_stage1_model

    torch.manual_seed(0)
    model = build_stage1_model({"model": {"preset": "tiny", "stage1_lm": {
        "hidden_size": 64, "num_layers": 1, "num_heads": 4, "ffn_dim": 128}}}, 300, seq_len=16)
    ids = torch.randint(10, 300, (1, 8))
    labels = ids.clone()
    seg = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2]])
    loss, token_loss, label_mask = model(ids, [], labels=labels, segment_ids=seg,
                                         position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]))
    assert label_mask.tolist() == [[True, True, True, False, True, True, True]]
    assert float(token_loss.detach()[0, 3]) == 0.0
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]
    assert not model.encoder.sam_model.patch_embed.proj.weight.grad.any()


def test_encoder_file_bytes_depend_on_its_tensors_only(tmp_path):
    """Equal tensors, equal bytes: the header (metadata keys included) is written in sorted
    order, so an encoder saved after a resume is byte-identical to the uninterrupted run's."""
    from safetensors.torch import load_file

    from train.stage1 import build_stage1_model, save_encoder

    torch.manual_seed(0)
    model = build_stage1_model({"model": {"preset": "tiny"}}, 64, special_ids=dict(
        bos_token_id=0, eos_token_id=1, pad_token_id=2, image_token_id=3))
    meta = {"preset": "tiny", "steps": 3}
    files = [save_encoder(model, tmp_path / f"e{i}.safetensors", 64, dict(meta)).read_bytes() for i in range(6)]
    assert all(f == files[0] for f in files[1:])
    loaded = load_file(str(tmp_path / "e0.safetensors"))
    state = model.encoder.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
