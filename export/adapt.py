"""``brogue adapt``: train one tenant's LinearAdapter on a frozen base model, store it.

The base ``.nemo`` is restored, a NeMo ``LinearAdapter`` (``encoder:NAME``, dim ``r``) is added to
every encoder layer, everything else is frozen, and the adapter is trained with PyTorch Lightning on
the tenant's NeMo manifest (CTC loss of the base model's head, AdamW, warmup + cosine decay,
SpecAugment as configured in the base). Replayed general speech keeps it from drifting on
everyone else: either as more rows to transcribe, or (``replay_loss="distill"``) as rows on which
the adapted model's output is held to the base model's. The trained adapter then goes through
:func:`brogue.export.adapter.export_adapter` into ``STORE/NAME/VERSION/`` and the entry is read back
with full validation against the base's fingerprint. On CPU here, on GPU with ``accelerator="gpu"``.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from brogue.clients.eval import read_manifest


@dataclass
class TrainingRun:
    """How a training run went: what an adapter and a full fine-tune both report."""

    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    train_hours: float
    peak_rss_mb: int


@dataclass
class AdaptResult(TrainingRun):
    manifest: object  # brogue.adapters.Manifest of the stored entry
    entry: Path


def _data_config(model, manifest: Path, batch_size: int, max_duration: float, speed_perturb: float = 0.0) -> dict:
    rate = int(model.cfg.sample_rate)
    cfg = {"manifest_filepath": str(manifest), "sample_rate": rate, "batch_size": batch_size,
           "shuffle": True, "max_duration": max_duration, "min_duration": 0.1, "num_workers": 0,
           "pin_memory": False, "trim_silence": False}
    if speed_perturb:
        # NeMo's speed perturbation (resampling: tempo, pitch and formants move together, as with a
        # longer or shorter vocal tract): each clip is played at one of 5 rates in 1 +- speed_perturb.
        cfg["augmentor"] = {"speed": {"prob": 0.8, "sr": rate, "resample_type": "scipy", "num_rates": 5,
                                      "min_speed_rate": 1 - speed_perturb, "max_speed_rate": 1 + speed_perturb}}
    if "tokenizer" not in model.cfg:  # character vocabulary
        cfg["labels"] = list(model.cfg.labels)
    return cfg


def _check_manifest(path: Path) -> float:
    """Total hours; fails early on a missing file or field (relative paths: the manifest's folder)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    total, n = 0.0, 0
    for i, line in enumerate(open(path), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        for k in ("audio_filepath", "duration", "text"):
            if k not in row:
                raise ValueError(f"{path}:{i}: no {k!r} field")
        audio = Path(row["audio_filepath"])
        if not audio.is_absolute():
            audio = path.parent / audio
        if not audio.is_file():
            raise FileNotFoundError(f"{path}:{i}: audio {audio} not found")
        total += float(row["duration"])
        n += 1
    if n == 0:
        raise ValueError(f"{path}: empty manifest")
    return total / 3600


def training_manifest(path: Path, out: Path, replay: Path | None = None, replay_fraction: float = 0.25,
                      seed: int = 0) -> tuple[int, int]:
    """Write the manifest the adapter trains on to ``out``, with absolute audio paths (NeMo resolves
    relative ones against the manifest's folder only when they exist from there; this never depends
    on the cwd). With ``replay``, rows drawn at random from it (general speech the base model was
    trained on) are mixed in to make ``replay_fraction`` of the result: the adapter then learns
    what differs in the tenant's speech without drifting on everyone else's. Returns (own, replayed)."""
    import random

    if not 0 <= replay_fraction < 1:
        raise ValueError(f"replay fraction must be in [0, 1), not {replay_fraction}")
    rows = read_manifest(Path(path).resolve())
    extra = []
    if replay is not None and replay_fraction > 0:
        pool = read_manifest(Path(replay).resolve())
        k = min(len(pool), round(len(rows) * replay_fraction / (1 - replay_fraction)))
        extra = random.Random(seed).sample(pool, k)
    mixed = rows + extra
    random.Random(seed + 1).shuffle(mixed)
    with open(out, "w") as f:
        for row in mixed:
            f.write(json.dumps(row) + "\n")
    return len(rows), len(extra)


def _ctc_head(model):
    """The CTC head of a CTC or hybrid model, or None (RNNT only)."""
    if hasattr(model, "ctc_decoder"):  # hybrid RNNT/CTC
        return model.ctc_decoder
    from nemo.collections.asr.models import EncDecCTCModel

    return model.decoder if isinstance(model, EncDecCTCModel) else None


def _posteriors(model, encoded):
    """The CTC head's log-probabilities of a CTC or hybrid model, or None (RNNT only)."""
    head = _ctc_head(model)
    return None if head is None else head(encoder_output=encoded)


def output_divergence(base_enc, base_out, enc, out, enc_len):
    """How far ``enc``/``out`` are from ``base_enc``/``base_out``: per frame, KL(base || other) of the
    CTC head's log-probabilities ``[B, T, V]``, or when ``out`` is None (RNNT) the squared distance
    of the encoder outputs ``[B, D, T]``; summed over each row's ``enc_len`` frames, averaged over rows."""
    import torch

    if out is None:  # encoder outputs [B, D, T]
        per_frame = ((enc - base_enc) ** 2).sum(dim=1)
    else:  # log-probabilities [B, T, V]
        per_frame = (base_out.exp() * (base_out - out)).sum(dim=-1)
    mask = torch.arange(per_frame.shape[1], device=per_frame.device)[None, :] < enc_len[:, None]
    return (per_frame * mask).sum() / per_frame.shape[0]


def distillation_loss(model, adapter: str, signal, signal_len):
    """How far the adapter moves the model's output on ``signal`` from the base model's own: per
    frame, KL(base || adapted) of the CTC head's distributions (CTC and hybrid models) or the
    squared distance of the encoder outputs (RNNT models), summed over frames, averaged over rows
    (the scale of a CTC loss per row; :func:`output_divergence`). Both passes see the same features,
    without SpecAugment or dropout; the base pass has ``adapter`` disabled and no gradient."""
    import torch
    from nemo.utils import logging

    was_training = model.training
    model.eval()
    try:
        feats, feats_len = model.preprocessor(input_signal=signal, length=signal_len)
        with torch.no_grad(), logging.temp_verbosity(logging.WARNING):  # NeMo logs every switch
            model.set_enabled_adapters(name=adapter, enabled=False)
            try:
                base_enc, enc_len = model.encoder(audio_signal=feats, length=feats_len)
                base_out = _posteriors(model, base_enc)
            finally:
                model.set_enabled_adapters(name=adapter, enabled=True)
        enc, _ = model.encoder(audio_signal=feats, length=feats_len)
        out = _posteriors(model, enc)
    finally:
        model.train(was_training)
    return output_divergence(base_enc, base_out, enc, out, enc_len)


def _distill_replay(model, replay_config: dict, weight: float, distill) -> None:
    """Make ``model`` train on batches ``{"own": ..., "replay": ...}``: its own training step
    (CTC loss) on the tenant's rows, plus ``weight`` times ``distill(signal, signal_len)`` (e.g.
    :func:`distillation_loss`) on the replayed rows, drawn from ``replay_config``'s manifest by a
    second loader."""
    from lightning.pytorch.utilities import CombinedLoader
    from omegaconf import OmegaConf

    replay_dl = model._setup_dataloader_from_config(config=OmegaConf.create(replay_config))
    model._train_dl = CombinedLoader({"own": model._train_dl, "replay": replay_dl}, mode="max_size_cycle")
    own_step = model.training_step

    def training_step(batch, batch_idx=0):  # Lightning passes batch_idx by that name
        out = own_step(batch["own"], batch_idx)
        loss = out["loss"] if isinstance(out, dict) else out
        signal, signal_len = batch["replay"][0], batch["replay"][1]
        return {"loss": loss + weight * distill(signal, signal_len)}

    model.training_step = training_step


def _check_options(replay_loss: str, distill_weight: float, batch_size: int, speed_perturb: float) -> None:
    """Refuse training options that cannot work, before any model is loaded."""
    if replay_loss not in ("ctc", "distill"):
        raise ValueError(f"replay loss must be 'ctc' or 'distill', not {replay_loss!r}")
    if distill_weight <= 0:
        raise ValueError(f"distillation weight must be above 0, not {distill_weight}")
    if replay_loss == "distill" and batch_size < 2:
        raise ValueError("a distilled replay needs batches of at least 2 rows (the tenant's and replayed ones)")
    if not 0 <= speed_perturb < 0.5:
        raise ValueError(f"speed perturbation must be in [0, 0.5) (0: none), not {speed_perturb}")


@dataclass
class _TrainingData:
    """The manifests one training run reads (see :func:`_training_data`)."""

    manifest: Path
    own: int
    replayed: int
    replay_manifest: Path | None = None  # a distilled replay's rows, read by a second loader
    replay_batch: int = 0  # rows of each batch from replay_manifest

    def describe(self, replay: Path | None) -> str:
        if self.replay_manifest is not None:
            return (f", {self.own} rows; {self.replay_batch} rows of each batch from {Path(replay).name}, "
                    f"distilled to the base's output")
        return f", {self.own} rows + {self.replayed} replayed from {Path(replay).name}" if self.replayed else ""


def _training_data(folder: Path, train_manifest: Path, replay: Path | None, replay_fraction: float,
                   replay_loss: str, batch_size: int, seed: int) -> _TrainingData:
    """Write the manifests to train on into ``folder``: :func:`training_manifest`'s mix, or for a
    distilled replay the tenant's rows and the replayed ones apart, ``replay_fraction`` of each
    batch (at least 1 row, at most ``batch_size - 1``) from the latter."""
    manifest = Path(folder) / "train_manifest.json"
    if replay_loss == "distill" and replay is not None and replay_fraction > 0:
        own, _ = training_manifest(train_manifest, manifest, seed=seed)
        replay_manifest = Path(folder) / "replay_manifest.json"
        replayed, _ = training_manifest(Path(replay), replay_manifest, seed=seed + 2)
        replay_batch = min(batch_size - 1, max(1, round(batch_size * replay_fraction)))
        return _TrainingData(manifest, own, replayed, replay_manifest, replay_batch)
    own, replayed = training_manifest(train_manifest, manifest, Path(replay) if replay else None,
                                      replay_fraction, seed)
    return _TrainingData(manifest, own, replayed)


def _fit(model, data: _TrainingData, *, steps: int, batch_size: int, lr: float, warmup: int, max_duration: float,
         speed_perturb: float, accelerator: str, progress: bool, distill=None,
         distill_weight: float = 1.0) -> tuple[list[float], float, int]:
    """Train ``model``'s trainable weights on ``data`` with Lightning for ``steps`` optimiser steps
    (AdamW, warmup + cosine decay to ``lr / 50``, gradient clip 1.0, SpecAugment as configured);
    with a distilled replay, ``distill`` is its loss (:func:`_distill_replay`). Returns the loss of
    every step, the training seconds and the steps done."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar
    from omegaconf import OmegaConf, open_dict

    losses: list[float] = []

    class Track(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))

    # tqdm: Lightning's RichProgressBar fails at start with the installed rich (IndexError in clear_live)
    bar = [TQDMProgressBar(refresh_rate=5)] if progress else []
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=32, max_steps=steps,
                         enable_checkpointing=False, logger=False, enable_progress_bar=progress,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[Track(), *bar], gradient_clip_val=1.0)
    with open_dict(model.cfg):
        model.cfg.optim = OmegaConf.create(
            {"name": "adamw", "lr": lr, "betas": [0.9, 0.98], "weight_decay": 0.0,
             "sched": {"name": "CosineAnnealing", "warmup_steps": min(warmup, max(steps // 5, 0)),
                       "min_lr": lr / 50}})
    model.set_trainer(trainer)
    distilled = data.replay_manifest is not None
    own_batch = batch_size - data.replay_batch if distilled else batch_size
    model.setup_training_data(OmegaConf.create(_data_config(model, data.manifest, own_batch, max_duration,
                                                            speed_perturb)))
    if distilled:
        _distill_replay(model, _data_config(model, data.replay_manifest, data.replay_batch, max_duration),
                        distill_weight, distill)
    model.setup_optimization(model.cfg.optim)
    t0 = time.time()
    trainer.fit(model)
    return losses, time.time() - t0, trainer.global_step


def _loss_ends(losses: list[float]) -> tuple[float, float]:
    """The first step's loss and the mean of the last 10 (NaN without steps)."""
    if not losses:
        return float("nan"), float("nan")
    return losses[0], sum(losses[-10:]) / len(losses[-10:])


def _peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _base_model(model_path, model, train_manifest: Path, replay, threads: int | None, seed: int):
    """Check the manifests (hours of ``train_manifest``), set threads and seed, restore the base
    (unless ``model`` is given): ``(model, its fingerprint, hours)``."""
    import lightning.pytorch as pl
    import torch

    from .nemo_model import fingerprint, load_nemo

    hours = _check_manifest(train_manifest)
    if replay is not None:
        _check_manifest(Path(replay))
    if threads:
        torch.set_num_threads(threads)
    pl.seed_everything(seed, verbose=False)
    if model is None:
        model = load_nemo(model_path)
    return model, fingerprint(model), hours


def train_adapter(
    model_path: str | Path,
    train_manifest: str | Path,
    name: str,
    *,
    store: str | Path,
    dim: int = 32,
    steps: int = 150,
    batch_size: int = 16,
    lr: float = 3e-3,
    warmup: int = 15,
    max_duration: float = 16.0,
    version: str | None = "v1",
    kind: str = "",
    description: str = "",
    accelerator: str = "cpu",
    replay: str | Path | None = None,
    replay_fraction: float = 0.25,
    threads: int | None = None,
    progress: bool = True,
    seed: int = 0,
    model=None,
    domain_lm: float = 0.0,
    speed_perturb: float = 0.0,
    replay_loss: str = "ctc",
    distill_weight: float = 1.0,
) -> AdaptResult:
    """Train ``encoder:NAME`` for ``steps`` optimiser steps; publish it as ``STORE/NAME/VERSION``.

    ``replay``: a manifest of general speech, mixed in as ``replay_fraction`` of the training rows
    (see :func:`training_manifest`). ``replay_loss``: ``"ctc"`` trains on the replayed rows'
    transcripts like on the tenant's; ``"distill"`` instead keeps the model's output on them where
    the base model's is (:func:`distillation_loss`, weighted by ``distill_weight``), and every
    batch then holds ``replay_fraction`` of its rows from the whole replay manifest. ``model``: an
    already restored base model to use instead of loading ``model_path`` (it is modified: the
    adapter is added to it). ``domain_lm``: when
    above 0, the training manifest's sentences become the entry's domain LM, mixed at that weight
    into the model's LM for streams on this adapter (a domain adapter learns its words this way).
    ``speed_perturb``: when above 0, most training clips are resampled to a speed in
    ``1 +- speed_perturb`` (more apparent speakers, for a tenant who recorded only a few).
    """
    import tempfile

    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

    from brogue.adapters import AdapterRef, BaseSpec, read_adapter

    from .adapter import export_adapter
    from .nemo_model import fingerprint

    AdapterRef(name, version or "v1")  # validate the name before spending minutes on training
    if not 0 <= domain_lm < 1:
        raise ValueError(f"domain LM weight must be in [0, 1) (0: none), not {domain_lm}")
    _check_options(replay_loss, distill_weight, batch_size, speed_perturb)
    train_manifest = Path(train_manifest)
    model, base_fp, hours = _base_model(model_path, model, train_manifest, replay, threads, seed)
    d_model = int(model.encoder.d_model)
    full = f"encoder:{name}"
    model.add_adapter(name=full, cfg=LinearAdapterConfig(in_features=d_model, dim=dim))
    model.set_enabled_adapters(enabled=False)
    model.set_enabled_adapters(name=full, enabled=True)
    model.freeze()
    model.unfreeze_enabled_adapters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    with tempfile.TemporaryDirectory(prefix="brogue-adapt-") as tmp:
        data = _training_data(Path(tmp), train_manifest, replay, replay_fraction, replay_loss, batch_size, seed)
        losses, seconds, done = _fit(
            model, data, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, max_duration=max_duration,
            speed_perturb=speed_perturb, accelerator=accelerator, progress=progress, distill_weight=distill_weight,
            distill=lambda signal, signal_len: distillation_loss(model, full, signal, signal_len))
    model.eval()
    if fingerprint(model) != base_fp:
        raise RuntimeError("the base weights changed during adapter training (they must stay frozen)")
    store = Path(store)
    lm_sentences = [r["text"] for r in read_manifest(train_manifest)] if domain_lm > 0 else None
    mix = data.describe(replay)
    aug = f", speed perturbation {speed_perturb:g}" if speed_perturb else ""
    description = description or (f"LinearAdapter dim {dim}, {steps} steps on {train_manifest.name} "
                                   f"({hours * 60:.1f} min of audio{mix}{aug}), {trainable} parameters")
    m = export_adapter(None, model=model, store=store, name=name, adapter=name, version=version, kind=kind,
                       lm_sentences=lm_sentences, lm_weight=domain_lm or 0.5, description=description)
    entry = store / m.name / m.version
    enc = model.encoder
    read_adapter(entry, BaseSpec(fingerprint=base_fp, n_layers=len(enc.layers), d_model=d_model, max_dim=dim))
    first, last = _loss_ends(losses)
    return AdaptResult(manifest=m, entry=entry, steps=done, seconds=seconds, first_loss=first, last_loss=last,
                       train_hours=hours, peak_rss_mb=_peak_rss_mb())
