"""TensorRT engines (plans) from the exported encoder ONNX graphs, built on GPU hosts only.

A plan is specific to the GPU model and the TensorRT version that built it, so it is built where it
runs: ``brogue export MODEL.nemo --out DIR --tensorrt`` on the GPU host, or
:func:`build_plans` on an already exported folder. The adapter bank stays a set of *input bindings*
(``adapter_ln_weight``, ``adapter_ln_bias``, ``adapter_down``, ``adapter_up`` with a dynamic slot
axis, plus ``adapter_ids``), so hot-swapping an adapter never rebuilds a plan. Each graph gets one
optimisation profile covering batch 1..``max_batch`` and 1..``slots`` bank slots.

On a host without a CUDA GPU or without the ``tensorrt`` package, :class:`TensorRTUnavailable`
says so; nothing else is affected.
"""

from __future__ import annotations

import json
from pathlib import Path

from brogue.engine.metadata import ENCODER_INPUTS


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot build here (no package, or no CUDA GPU)."""


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({e}); install it on a GPU host with `pip install 'brogue[gpu]'` "
            "and build plans there: a plan only runs on the GPU type that built it") from None
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # TensorRT raises a bare error without a CUDA device
        raise TensorRTUnavailable(f"TensorRT cannot create a builder here (no CUDA GPU?): {e}") from None
    if builder is None:
        raise TensorRTUnavailable("TensorRT cannot create a builder here: no CUDA GPU found")
    return trt, logger, builder


def encoder_profile(meta: dict, latency: dict, first: bool, max_batch: int, slots: int) -> dict:
    """``{input: (min, opt, max)}`` shapes for one encoder graph."""
    enc, ad = meta["encoder"], meta["adapters"]
    n_mels = meta["features"]["n_mels"]
    T = (latency["chunk_size"][0] + latency["pre_encode_cache_size"][0]) if first else \
        (latency["shift_size"][1] + latency["pre_encode_cache_size"][1])
    L, d, r = ad["n_layers"], ad["d_model"], ad["max_dim"]
    opt_b = max(1, max_batch // 2)

    def batch(*rest):
        return ((1, *rest), (opt_b, *rest), (max_batch, *rest))

    def bank(*rest):
        return ((1, *rest), (slots, *rest), (slots, *rest))

    shapes = (((1, n_mels, 1), (opt_b, n_mels, T), (max_batch, n_mels, T)), batch(),
              batch(*enc["cache_last_channel"]), batch(*enc["cache_last_time"]), batch(),  # STREAM_INPUTS
              batch(), bank(L, d), bank(L, d), bank(L, r, d), bank(L, d, r))  # BANK_INPUTS
    return dict(zip(ENCODER_INPUTS, shapes, strict=True))


def build_plan(onnx_path: Path, plan_path: Path, profile: dict, *, fp16: bool = False,
               workspace_gb: float = 4.0) -> Path:
    """Parse ``onnx_path``, build an engine with one optimisation profile, write it to ``plan_path``."""
    trt, logger, builder = _tensorrt()
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    prof = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        prof.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(prof)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    plan_path.write_bytes(bytes(engine))
    return plan_path


def build_plans(model_dir: str | Path, *, max_batch: int = 64, slots: int = 16, fp16: bool = False) -> list[Path]:
    """Build a plan beside every encoder graph of an exported model; record them in model.json."""
    _tensorrt()  # fail before doing anything when TensorRT cannot build here
    root = Path(model_dir)
    meta = json.loads((root / "model.json").read_text())
    built = []
    for lat in meta["latencies"]:
        plans = {}
        for variant, graph in lat["graphs"].items():
            plan = root / (Path(graph).stem + ".plan")
            if plan not in built:
                build_plan(root / graph, plan, encoder_profile(meta, lat, variant == "first", max_batch, slots),
                           fp16=fp16)
                built.append(plan)
            plans[variant] = plan.name
        lat["plans"] = plans
    meta["tensorrt"] = {"max_batch": max_batch, "slots": slots, "fp16": fp16}
    (root / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return built
