"""NeMo encoder LinearAdapters -> adapter-store entries (safetensors + manifest).

Two sources are accepted:

- a file written by NeMo's ``model.save_adapters(path, name="encoder:NAME")``: a torch pickle of
  ``{"encoder:NAME": [per-layer state dicts], "__cfg__": DictConfig}``. It is read with
  ``torch.load(weights_only=True)`` and an allowlist of the OmegaConf/NeMo config classes such a file
  holds, so a file carrying any other object (code) is refused, never executed;
- a ``.nemo`` model (or a live NeMo model) with the adapter added: its ``encoder.layers.*.adapter_layer``
  parameters.

Only what the bank computes is accepted: a ``LinearAdapter`` with ``norm_position='pre'``, swish
activation and the residual-add strategy, in the encoder's Conformer layers (location ``post``).
Anything else is refused with a message that says what it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from brogue.adapters import AdapterError, Manifest, publish_adapter

_KEY = re.compile(r"^(?:encoder\.layers\.(?P<layer>\d+)\.adapter_layer\.)?(?P<name>[^.]+)\.module\.(?P<idx>\d)\.(?P<p>weight|bias)$")


def _safe_globals():
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    allowed = [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, BooleanNode, FloatNode, IntegerNode,
               StringNode, typing.Any, collections.defaultdict, dict, list, int, float, str, bool]
    try:
        from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig
        from nemo.core.classes.mixins.adapter_mixin_strategies import ResidualAddAdapterStrategyConfig

        allowed += [LinearAdapterConfig, ResidualAddAdapterStrategyConfig]
    except ImportError:
        pass
    return allowed


def load_adapter_file(path: str | Path) -> dict:
    """Read a NeMo ``save_adapters`` file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError("missing", f"{path}: no such adapter file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError or zipfile errors
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = f"a pickled {found[1]}" if found else "a pickled object"
            raise AdapterError("unsafe", f"{path}: holds {what}, which is not an allowed adapter or config "
                                         "class; refused without unpickling it") from None
        msg = (text.splitlines() or [type(e).__name__])[0]  # an empty file gives a bare EOFError()
        raise AdapterError("truncated", f"{path}: not a loadable NeMo adapter file ({msg})") from None
    if not isinstance(data, dict) or not any(k != "__cfg__" for k in data):
        raise AdapterError("manifest", f"{path}: not a NeMo save_adapters file (no adapter entries)")
    return data


def _check_cfg(cfg, name: str, origin: str) -> None:
    if cfg is None:
        return
    target = str(cfg.get("_target_", ""))
    if target and not target.endswith("LinearAdapter"):
        raise AdapterError("kind", f"{origin}: adapter {name!r} is {target}, only LinearAdapter is supported")
    if cfg.get("norm_position", "pre") != "pre":
        raise AdapterError("kind", f"{origin}: adapter {name!r} has norm_position={cfg.get('norm_position')!r}; "
                                   "only 'pre' is supported")
    if cfg.get("activation", "swish") not in ("swish", "silu"):
        raise AdapterError("kind", f"{origin}: adapter {name!r} uses activation {cfg.get('activation')!r}; "
                                   "only swish is supported")
    strategy = str((cfg.get("adapter_strategy") or {}).get("_target_", "ResidualAddAdapterStrategy"))
    if not strategy.endswith("ResidualAddAdapterStrategy"):
        raise AdapterError("kind", f"{origin}: adapter {name!r} uses strategy {strategy}; only residual add")


def _stack(per_layer: dict[int, dict[str, torch.Tensor]], n_layers: int, d_model: int, origin: str):
    """Per-layer LinearAdapter parameters -> the store's stacked arrays; missing layers = identity."""
    dims = {p["down"].shape[0] for p in per_layer.values() if "down" in p}
    if len(dims) != 1:
        raise AdapterError("shape", f"{origin}: adapter dims differ across layers: {sorted(dims)}")
    r = dims.pop()
    arrays = {
        "ln_weight": np.ones((n_layers, d_model), np.float32),
        "ln_bias": np.zeros((n_layers, d_model), np.float32),
        "down": np.zeros((n_layers, r, d_model), np.float32),
        "up": np.zeros((n_layers, d_model, r), np.float32),
    }
    for layer, params in per_layer.items():
        if layer >= n_layers:
            raise AdapterError("layers", f"{origin}: adapter has layer {layer}, the model has {n_layers}")
        missing = {"ln_weight", "ln_bias", "down", "up"} - set(params)
        if missing:
            raise AdapterError("tensors", f"{origin}: layer {layer} lacks {sorted(missing)}")
        for k, v in params.items():
            want = arrays[k].shape[1:]
            if tuple(v.shape) != want:
                raise AdapterError("shape", f"{origin}: layer {layer} {k} has shape {tuple(v.shape)}, "
                                            f"expected {want} for d_model {d_model}")
            arrays[k][layer] = v.detach().float().numpy()
    return arrays


_PARAM = {("0", "weight"): "ln_weight", ("0", "bias"): "ln_bias", ("1", "weight"): "down", ("3", "weight"): "up"}


def _collect(items, origin: str) -> dict[str, dict[int, dict[str, torch.Tensor]]]:
    """``(layer, key, tensor)`` triples -> ``{adapter name: {layer: {param: tensor}}}``."""
    out: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for layer, key, value in items:
        m = _KEY.match(key)
        if not m or (m["idx"], m["p"]) not in _PARAM:
            raise AdapterError("tensors", f"{origin}: unexpected adapter parameter {key!r} "
                                          "(not a pre-norm LinearAdapter)")
        out.setdefault(m["name"], {}).setdefault(layer, {})[_PARAM[(m["idx"], m["p"])]] = value
    return out


def adapters_from_file(path: str | Path, n_layers: int, d_model: int) -> dict[str, dict[str, np.ndarray]]:
    """All encoder adapters in a ``save_adapters`` file, as stacked store arrays, by adapter name."""
    data = load_adapter_file(path)
    cfg = data.get("__cfg__")
    result = {}
    for key, layers in data.items():
        if key == "__cfg__":
            continue
        module, _, name = key.rpartition(":")
        if module not in ("encoder", ""):
            raise AdapterError("kind", f"{path}: adapter {key!r} is on the {module}; only encoder adapters "
                                       "can be served")
        if not isinstance(layers, list):
            raise AdapterError("manifest", f"{path}: entry {key!r} is not a list of layer state dicts")
        _check_cfg(cfg.get(name) if cfg is not None else None, name, str(path))
        items = [(i, k, v) for i, sd in enumerate(layers) for k, v in sd.items()]
        for _, k, v in items:
            if not isinstance(v, torch.Tensor):
                raise AdapterError("tensors", f"{path}: {k!r} is not a tensor")
        per_name = _collect(items, str(path))
        result.update({n: _stack(p, n_layers, d_model, str(path)) for n, p in per_name.items()})
    return result


def adapters_from_model(model) -> dict[str, dict[str, np.ndarray]]:
    """All encoder adapters of a live NeMo model, as stacked store arrays, by adapter name."""
    enc = model.encoder
    n_layers, d_model = len(enc.layers), int(enc.d_model)
    items = []
    for k, v in model.state_dict().items():
        if ".adapter_layer." not in k:
            continue
        if not k.startswith("encoder.layers."):
            raise AdapterError("kind", f"model adapter parameter {k!r} is not in the encoder layers")
        layer = int(k.split(".")[2])
        items.append((layer, k, v))
    cfgs = model.cfg.get("adapters", {}) if "adapters" in model.cfg else {}
    # The config first: it says what is wrong (e.g. norm_position) better than unexpected tensor names do.
    for n in sorted({k.split(".")[4] for _, k, _ in items}):
        _check_cfg(cfgs.get(n), n, "model")
    per_name = _collect(items, "model")
    return {n: _stack(p, n_layers, d_model, "model") for n, p in per_name.items()}


def adapter_into_model(model, name: str, weights) -> None:
    """Add ``encoder:NAME`` to a live NeMo model as a LinearAdapter holding ``weights`` (a store
    entry's :class:`brogue.adapters.AdapterWeights`): the inverse of :func:`adapters_from_model`.
    The adapter is added, not enabled."""
    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

    cfg = LinearAdapterConfig(in_features=int(model.encoder.d_model), dim=int(weights.down.shape[1]))
    model.add_adapter(name=f"encoder:{name}", cfg=cfg)
    with torch.no_grad():
        for i, layer in enumerate(model.encoder.layers):
            module = layer.adapter_layer[name].module
            for (idx, param), key in _PARAM.items():
                getattr(module[int(idx)], param).copy_(torch.from_numpy(getattr(weights, key)[i]))


def export_adapter(
    source: str | Path | None,
    *,
    model,
    store: str | Path,
    name: str | None = None,
    adapter: str | None = None,
    version: str | None = None,
    kind: str = "",
    description: str = "",
    lm_sentences: list[str] | None = None,
    lm_weight: float = 0.5,
) -> Manifest:
    """Convert one adapter into a store entry ``store/NAME/VERSION`` and return its manifest.

    ``source``: a ``save_adapters`` file, or None to take the adapter from ``model`` itself.
    ``model``: the base model (a NeMo model or a ``.nemo`` path): it gives the fingerprint and the
    expected shapes. ``adapter``: which adapter of the source (needed when it holds several).
    ``name``: the store name (default: the adapter's own name). ``lm_sentences``: the domain's
    text, stored as the entry's domain LM, mixed into the model's LM at ``lm_weight``.
    """
    from .nemo_model import fingerprint, load_nemo

    if isinstance(model, (str, Path)):
        model = load_nemo(model)
    enc = model.encoder
    n_layers, d_model = len(enc.layers), int(enc.d_model)
    found = adapters_from_file(source, n_layers, d_model) if source is not None else adapters_from_model(model)
    if not found:
        raise AdapterError("missing", f"{source or 'model'}: holds no encoder adapter")
    if adapter is None:
        if len(found) > 1:
            raise AdapterError("ambiguous", f"{source or 'model'} holds adapters {sorted(found)}; pick one")
        adapter = next(iter(found))
    if adapter not in found:
        raise AdapterError("missing", f"{source or 'model'}: no adapter {adapter!r} (has {sorted(found)})")
    return publish_adapter(
        store,
        found[adapter],
        name=name or adapter,
        version=version,
        kind=kind,
        description=description,
        base_fingerprint=fingerprint(model),
        source={"from": str(source) if source else "model", "adapter": adapter,
                "nemo_class": type(model).__name__},
        lm_sentences=lm_sentences,
        lm_weight=lm_weight,
    )
