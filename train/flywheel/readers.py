"""Where the recognizer reads the pool's batches (``flywheel.label.executor``): here, or on Ray actors.

Both readers have one method, ``map(batches) -> iterator of reads``: for each batch (a list
of ``Patch``, a fixed slice of the sorted pool) the ``(text, confidence, finished)`` of its
patches, **in batch order**. ``RoundRunner.label`` writes each batch's line to
``labels.jsonl`` as it comes, so the file, and resuming after a kill, are the same whichever
reader runs.

* ``LocalReader``: the round's model in this process (``recognizer.read_patches``).
* ``RayReader`` (``executor: ray``): one actor per device slot, each loading the recognizer
  once from the round's exported model (``train/model``) and the run's tokenizer: one actor per
  GPU of the cluster (``num_gpus=1``) when it has GPUs, else ``flywheel.label.actors`` CPU actors
  of ``flywheel.threads`` threads each. ``ray.util.ActorPool.map`` hands the batches to idle
  actors and returns their reads in submission order. A batch is read by the same code with the
  same batch size as in the local path, so on the same kind of device (and thread count) the
  labels are identical, byte for byte (``tests/test_flywheel_ray.py``); GPU actors read in
  float32 like the local path, but their kernels may round differently from a CPU's.

Ray is joined or started with the data engine's helpers (``data_engine.ray_executor.connect``:
``flywheel.label.ray_address``, else ``$RAY_ADDRESS``, else a new local instance, shut down at
the end). The run directory must be on a file system every node sees at the same path, as for
the engine (docs/cluster.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from data_engine.flywheel.canvas import is_rtl

from .recognizer import load_recognizer, read_patches


def canvas_kw(patches) -> dict:
    """How each patch's canvas is drawn (``read_patches`` / ``reference_nll``): kind, direction."""
    return {"kinds": [p.kind for p in patches], "rtl": [is_rtl(p.script) for p in patches]}


def read_batch(model, tok, batch, read_kw: dict) -> list[tuple[str, float, bool]]:
    """(text, confidence, finished) per patch of ``batch`` (anything with image, kind, script)."""
    return read_patches(model, tok, [p.image for p in batch], **canvas_kw(batch), **read_kw)


class LocalReader:
    """Reads batches with a model loaded in this process."""

    def __init__(self, model, tokenizer, read_kw: dict):
        self.model, self.tok, self.read_kw = model, tokenizer, read_kw

    def map(self, batches: Iterable[list]) -> Iterator[list]:
        for batch in batches:
            yield read_batch(self.model, self.tok, batch, self.read_kw)

    def close(self) -> None:
        pass


class RecognizerActor:
    """A Ray actor holding one recognizer (loaded once, on its GPU when it was given one)."""

    def __init__(self, model_dir: str, tokenizer_dir: str, threads: int, read_kw: dict):
        import ray
        import torch

        torch.set_num_threads(threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.model, self.tok = load_recognizer(model_dir, tokenizer_dir, device=device)
        self.read_kw = read_kw

    def read(self, batch: list) -> list[tuple[str, float, bool]]:
        return read_batch(self.model, self.tok, batch, self.read_kw)


class RayReader:
    """Reads batches on a pool of ``RecognizerActor``s (see the module doc)."""

    def __init__(self, model_dir: str | Path, tokenizer_dir: str | Path, *, read_kw: dict, actors: int,
                 threads: int, address: str | None = None, log=print):
        import ray
        from ray.util import ActorPool

        from data_engine.ray_executor import connect

        import torch

        # a new local instance gets a CPU per GPU actor too (Ray detects this machine's GPUs)
        self.owns = connect(address, num_cpus=max(actors * threads, torch.cuda.device_count()))
        try:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            n, opts = (gpus, {"num_gpus": 1, "num_cpus": 1}) if gpus else (actors, {"num_cpus": threads})
            cls = ray.remote(**opts)(RecognizerActor)
            self.actors = [cls.remote(str(Path(model_dir).resolve()), str(Path(tokenizer_dir).resolve()),
                                      threads, read_kw) for _ in range(n)]
            self.pool = ActorPool(self.actors)
            log(f"[flywheel] labelling on {n} Ray actor(s) ({'1 GPU' if gpus else f'{threads} CPU thread(s)'} each)")
        except BaseException:
            self.close()
            raise

    def map(self, batches: Iterable[list]) -> Iterator[list]:
        # strip what the actors do not need (the crops and kinds travel; keys, texts stay here)
        slim = [[_Slim(p.image, p.kind, p.script) for p in batch] for batch in batches]
        return self.pool.map(lambda actor, batch: actor.read.remote(batch), slim)

    def close(self) -> None:
        import ray

        from data_engine.ray_executor import disconnect

        for a in getattr(self, "actors", []):
            ray.kill(a)
        self.actors = []
        disconnect(self.owns)


class _Slim:
    """What ``read_patches`` needs of a patch."""

    __slots__ = ("image", "kind", "script")

    def __init__(self, image, kind: str, script: str):
        self.image, self.kind, self.script = image, kind, script


def make_reader(label_cfg, *, model, tokenizer, model_dir: Path, tokenizer_dir: Path, read_kw: dict,
                threads: int, log=print):
    """The reader ``flywheel.label.executor`` names."""
    if label_cfg.executor == "ray":
        return RayReader(model_dir, tokenizer_dir, read_kw=read_kw, actors=label_cfg.actors, threads=threads,
                         address=label_cfg.ray_address, log=log)
    return LocalReader(model, tokenizer, read_kw)
