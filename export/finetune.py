"""``brogue finetune``: train every weight of a base model, export it and store it as a model version.

The base ``.nemo`` is restored and all its weights are trained (the preprocessor, which has none,
and any NeMo adapters stay fixed) with the data, schedule and replay of ``brogue adapt``
(:mod:`.adapt`): the loss of the model's own head on the tenant's NeMo manifest, AdamW, warmup +
cosine decay, SpecAugment as configured in the base, gradient clip 1.0. A distilled replay holds
the output on replayed rows to a frozen copy of the base's (:func:`distillation_loss`). The result
is saved as a ``.nemo``, exported with :func:`.nemo_export.export_model`, and published into a
model store (:class:`brogue.models.ModelStore`) as ``NAME@VERSION``, kind "full", with the base's
fingerprint as its parent. On CPU here, on GPU with ``accelerator="gpu"``.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapt import (TrainingRun, _base_model, _check_options, _ctc_head, _fit, _loss_ends, _peak_rss_mb,
                    _posteriors, _training_data, output_divergence)


@dataclass
class FinetuneResult(TrainingRun):
    nemo: Path
    export_dir: Path
    manifest: object  # brogue.models.ModelManifest of the stored entry, or None (no store)
    trainable: int  # parameters trained
    fingerprint: str
    parent_fingerprint: str
    description: str
    source: dict  # the training options, data and figures, as stored in the entry's manifest


class FrozenReference(torch.nn.Module):
    """A frozen copy of a model's encoder and CTC head (``head`` None for RNNT), in eval mode: the
    base a distilled replay holds the fine-tuned model to (a NeMo model cannot be deep-copied whole)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = copy.deepcopy(model.encoder)
        head = _ctc_head(model)
        self.head = None if head is None else copy.deepcopy(head)
        self.eval()
        self.requires_grad_(False)


def distillation_loss(model, reference: FrozenReference, signal, signal_len):
    """How far fine-tuning has moved the model's output on ``signal`` from ``reference``'s (the
    base): :func:`.adapt.output_divergence` of the two, as in :func:`.adapt.distillation_loss`.
    Both passes see the same features, without SpecAugment or dropout; the reference pass has no
    gradient."""
    was_training = model.training
    model.eval()
    try:
        feats, feats_len = model.preprocessor(input_signal=signal, length=signal_len)
        with torch.no_grad():
            reference.to(feats.device)
            base_enc, enc_len = reference.encoder(audio_signal=feats, length=feats_len)
            base_out = None if reference.head is None else reference.head(encoder_output=base_enc)
        enc, _ = model.encoder(audio_signal=feats, length=feats_len)
        out = _posteriors(model, enc)
    finally:
        model.train(was_training)
    return output_divergence(base_enc, base_out, enc, out, enc_len)


def _unfreeze(model, freeze: tuple[str, ...]) -> int:
    """Make every weight trainable but the preprocessor's, NeMo adapters and those whose name starts
    with one of ``freeze``; returns the number of trainable parameters."""
    if hasattr(model, "get_enabled_adapters") and model.get_enabled_adapters():
        model.set_enabled_adapters(enabled=False)
    names = [n for n, _ in model.named_parameters()]
    unknown = [f for f in freeze if not any(n.startswith(f) for n in names)]
    if unknown:
        raise ValueError(f"no parameter name starts with {', '.join(map(repr, unknown))} "
                         f"(names start with: {', '.join(sorted({n.split('.')[0] for n in names}))})")
    fixed = ("preprocessor.", *freeze)
    for n, p in model.named_parameters():
        p.requires_grad_(not (n.startswith(fixed) or ".adapter_layer." in n))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError("nothing left to train: every weight is frozen")
    return trainable


def finetune(
    model_path: str | Path | None,
    train_manifest: str | Path,
    name: str,
    *,
    out_nemo: str | Path,
    export_dir: str | Path,
    store: str | Path | None = None,
    version: str = "v1",
    steps: int = 150,
    batch_size: int = 16,
    lr: float = 1e-4,
    warmup: int = 15,
    max_duration: float = 16.0,
    replay: str | Path | None = None,
    replay_fraction: float = 0.25,
    replay_loss: str = "ctc",
    distill_weight: float = 1.0,
    speed_perturb: float = 0.0,
    freeze: tuple[str, ...] = (),
    head: str | None = None,
    max_adapter_dim: int = 64,
    threads: int | None = None,
    seed: int = 0,
    accelerator: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    model=None,
    description: str = "",
) -> FinetuneResult:
    """Train every weight for ``steps`` optimiser steps; write ``out_nemo`` and its export at
    ``export_dir``; with ``store``, publish the export there as ``NAME@VERSION``.

    The data options are :func:`.adapt.train_adapter`'s: ``replay`` with ``replay_fraction`` and
    ``replay_loss`` (``"distill"``: :func:`distillation_loss` against the base, weighted by
    ``distill_weight``), ``speed_perturb``, ``max_duration``. ``freeze``: parameter name prefixes
    to keep fixed as well (e.g. ``"encoder.pre_encode"``). ``head`` and ``max_adapter_dim``: the
    export's (:func:`.nemo_export.export_model`). ``overwrite``: replace an existing ``out_nemo``
    and export (refused otherwise). ``model``: an already restored base model to use instead of
    loading ``model_path`` (it is trained in place). The name, the options, the manifests, the
    output paths and the store entry are all checked before training.
    """
    from brogue.models import ModelError, ModelRef, ModelStore

    from .nemo_export import export_model
    from .nemo_model import fingerprint

    ref = ModelRef(name, version)  # validate the name before spending minutes on training
    _check_options(replay_loss, distill_weight, batch_size, speed_perturb)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    if lr <= 0:
        raise ValueError(f"learning rate must be above 0, not {lr}")
    out_nemo, export_dir = Path(out_nemo), Path(export_dir)
    if not overwrite:
        if out_nemo.exists():
            raise FileExistsError(f"{out_nemo} exists (remove it, choose another path, or overwrite)")
        if export_dir.is_dir() and any(export_dir.iterdir()):
            raise FileExistsError(f"{export_dir} is not empty (remove it, choose another folder, or overwrite)")
    if store is not None and ModelStore(store).path(ref).exists():
        raise ModelError("exists", f"model {ref} is already in the store ({store}); entries are immutable, "
                                   "publish a new version")
    train_manifest = Path(train_manifest)
    model, base_fp, hours = _base_model(model_path, model, train_manifest, replay, threads, seed)
    trainable = _unfreeze(model, tuple(freeze))

    with tempfile.TemporaryDirectory(prefix="brogue-finetune-") as tmp:
        data = _training_data(Path(tmp), train_manifest, replay, replay_fraction, replay_loss, batch_size, seed)
        reference = FrozenReference(model) if data.replay_manifest is not None else None
        losses, seconds, done = _fit(
            model, data, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, max_duration=max_duration,
            speed_perturb=speed_perturb, accelerator=accelerator, progress=progress, distill_weight=distill_weight,
            distill=lambda signal, signal_len: distillation_loss(model, reference, signal, signal_len))
    reference = None  # free its memory before the export
    model.eval()
    model.cpu()
    out_nemo.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(out_nemo))
    meta = export_model(out_nemo, export_dir, head=head, max_adapter_dim=max_adapter_dim, name=name)
    fp = meta["fingerprint"]
    if fp != fingerprint(model):
        raise RuntimeError(f"{out_nemo} restores to other weights than the ones trained (fingerprint {fp})")
    first, last = _loss_ends(losses)
    base = Path(model_path).name if model_path else f"the model {base_fp[:19]}"
    aug = f", speed perturbation {speed_perturb:g}" if speed_perturb else ""
    fixed = f", {', '.join(freeze)} fixed" if freeze else ""
    description = description or (f"full fine-tune of {base}: {done} steps on {train_manifest.name} "
                                   f"({hours * 60:.1f} min of audio{data.describe(replay)}{aug}), "
                                   f"{trainable} parameters{fixed}")
    source = {
        "base": str(model_path) if model_path else "", "train_manifest": train_manifest.name,
        "train_hours": round(hours, 4), "rows": data.own, "replay": Path(replay).name if replay else None,
        "replay_fraction": replay_fraction if replay else 0.0, "replay_loss": replay_loss,
        "replayed_rows": data.replayed, "distill_weight": distill_weight, "steps": done, "batch_size": batch_size,
        "lr": lr, "warmup": warmup, "max_duration": max_duration, "speed_perturb": speed_perturb,
        "freeze": list(freeze), "seed": seed, "accelerator": accelerator, "seconds": round(seconds, 1),
        "first_loss": None if first != first else round(first, 4),  # NaN: no step
        "last_loss": None if last != last else round(last, 4), "trainable_parameters": trainable,
    }
    manifest = None
    if store is not None:
        manifest = ModelStore(store).publish_dir(export_dir, ref, kind="full", description=description,
                                                 parent_fingerprint=base_fp, source=source)
    return FinetuneResult(nemo=out_nemo, export_dir=export_dir, manifest=manifest, steps=done, seconds=seconds,
                          first_loss=first, last_loss=last, train_hours=hours, peak_rss_mb=_peak_rss_mb(),
                          trainable=trainable, fingerprint=fp, parent_fingerprint=base_fp, description=description,
                          source=source)
