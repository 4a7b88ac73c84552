"""The parts of ``benchmarks/gpu_check.py``: one module per section of the device check.

    reference.py    transformers' DeepSeek-OCR-2 SAM and text model with ocrflow's weights
    flops.py        counted FLOPs of the decoder and DeepEncoder, peak FLOP/s, MFU
    correctness.py  bf16 vs fp32, grouped GEMM vs loop, SDPA vs eager, fused AdamW vs reference
    speed.py        encoder / SAM / decoder training speed beside transformers, peak memory
    training.py     stage 1 and stage 2 runs: finite and falling loss, bit-exact resume
    report.py       deadline and section budgets, the JSON + Markdown report, targets

Every function takes its device, dtype and sizes as arguments: the CUDA run and the CPU
``--dry`` run call the same functions (docs/benchmarks.md, "GPU check").
"""
