"""The kernels of a GPU run against their references on CUDA (``gpu`` marker: skipped without a
device). The checks and their tolerances: benchmarks/check/correctness.py; the sizes are the
CUDA plan's of benchmarks/gpu_check.py, which runs the same functions (and, with ``--dry``,
on CPU in the default tests)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.check import correctness
from benchmarks.gpu_check import PLANS
from models.config import get_preset

pytestmark = pytest.mark.gpu

PLAN = PLANS["cuda"]
SIZES = PLAN.correctness


def _assert_passed(results: list[dict]) -> None:
    assert results and all(r["passed"] for r in results), results


def test_bf16_matches_fp32_encoder_and_decoder():
    _assert_passed(correctness.bf16_vs_fp32(get_preset(PLAN.preset), "cuda", SIZES["side"], SIZES["seq_len"],
                                            SIZES["decoder_layers"]))


def test_grouped_gemm_moe_matches_the_per_expert_loop():
    _assert_passed([correctness.grouped_vs_loop(get_preset(PLAN.preset), "cuda", torch.bfloat16, SIZES["moe_tokens"])])


def test_sdpa_matches_eager_attention():
    _assert_passed(correctness.sdpa_vs_eager("cuda", torch.bfloat16, SIZES["attn_heads"], SIZES["attn_head_dim"],
                                             SIZES["attn_seq_len"], SIZES["sam_grid"]))


def test_fused_adamw_step_matches_the_reference():
    _assert_passed([correctness.fused_adamw(get_preset(PLAN.preset), "cuda")])
