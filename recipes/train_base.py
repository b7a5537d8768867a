"""Train the demo base model: a small cache-aware streaming FastConformer-CTC on the base set only.

    python recipes/train_base.py --data /work/data --out model_repo/demo.nemo --minutes 80 \
        --batch-size 16 --lr 2e-3 --warmup 300 --vocab char --subsampling 4
    python recipes/train_base.py --data /work/data --out model_repo/demo.nemo --minutes 90 \
        --batch-size 16 --lr 1.5e-3 --warmup 200 --init model_repo/demo.nemo   # a second budget
    python recipes/train_base.py --data /work/data --out model_repo/demo.nemo --minutes 95 \
        --batch-size 16 --lr 5e-4 --warmup 200 --init model_repo/demo.nemo     # a third
    python recipes/train_base.py --data /work/data --out model_repo/demo.nemo --minutes 90 \
        --batch-size 16 --lr 5e-4 --warmup 300 --init model_repo/demo.nemo \
        --train base_train.json base_train2.json --spec-augment 2,10,2,0.04     # a fourth
    python recipes/train_base.py --data /work/data --out model_repo/demo.nemo --minutes 80 \
        --batch-size 16 --lr 5e-4 --warmup 300 --init model_repo/demo.nemo --grow-layers 2 \
        --train base_train.json base_train2.json --spec-augment 2,10,2,0.04     # a fifth, 6 layers
    python recipes/train_base.py --data /work/data --out model_repo/demo.nemo --minutes 85 \
        --batch-size 16 --lr 4e-4 --warmup 200 --init model_repo/demo.nemo \
        --train base_train.json base_train2.json base_train3.json --spec-augment 2,10,2,0.04  # a sixth

What the demo uses (recipes/make_demo.sh): the 28-character vocabulary, 4 layers x 144 (6 after the
fifth budget's --grow-layers 2), subsampling 4 (40 ms frames), att_context_size [72, 5]: chunks of 6
encoder frames = 240 ms, 2.9 s of left context; rel-pos table 512 (a small ONNX constant). Measured
here: with 80 ms frames (subsampling 8), neither characters (too few frames: TTS speech reaches 18+
characters per second) nor BPE-128 or BPE-512 left CTC's all-blank plateau within 150-1600 steps;
characters at 40 ms frames emit recognisable letters by step 400. ``--vocab N`` trains a
SentencePiece BPE of N pieces instead.

AdamW, no SpecAugment in the first budgets (a short CPU budget: every step must go to leaving the
plateau). After three budgets on base_train (12k sentences, ~25 passes) the model read its training
sentences at 19% greedy WER (full context) and unseen base_dev sentences at 44% (the same flite,
Festival, mbrola and pico voices; held-out espeak-ng variants): it had learnt the sentences. The
fourth budget doubles the sentences (base_train2) and adds mild SpecAugment (--spec-augment; on the
trained model it first raised the loss from ~5 to ~50). The fifth grows the encoder to 6 layers
(--grow-layers), the sixth adds base_train3 (8k spoken wordnet definitions). The learning
rate warms up over --warmup steps, then decays on a cosine over the wall-clock budget (--minutes),
so the model ends annealed however fast this host is. Batches hold utterances of similar length
(less padding); the first pass runs them shortest first (SortaGrad), later passes in random order.
--init starts AdamW afresh (a .nemo keeps no optimiser state), so every continued budget first
undoes some of the last one. Measured on the third budget: the probe read 42% (peak 1e-3) and 48%
(peak 5e-4) at the end of the warm-up, then 57% at step 600 with either peak; the 1e-3 run (loss 27
against 11-15) was aborted there, the 5e-4 run recovered to 40-44% by its end. Keep the peak of a
later budget low.
Every --probe-every steps it prints a greedy WER on 16 base-test utterances (a progress probe).
Stops after --minutes or --max-steps, whichever comes first. Runs with PyTorch Lightning on CPU here
and unchanged on a GPU (--accelerator gpu). Writes the .nemo and ``<out>.train.json`` (steps, epochs,
seconds, peak RSS, last loss).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

from brogue.clients.eval import read_manifest

D_MODEL, N_LAYERS, N_HEADS = 144, 4, 4
ATT_CONTEXT = (72, 5)
SUBSAMPLING = 4
VOCAB = 512


def train_tokenizer(manifest: Path, out_dir: Path, vocab_size: int = VOCAB) -> Path:
    """A SentencePiece BPE model on the manifest's text: ``out_dir/tokenizer.model``."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "text.txt"
    text.write_text("".join(json.loads(l)["text"] + "\n" for l in open(manifest)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   unk_id=0, pad_id=-1, split_digits=True, minloglevel=2)
    text.unlink()
    # NeMo's BPE models also register vocab.txt (word-piece style, as its tokenizer script writes it)
    pieces = [l.split("\t")[0] for l in open(out_dir / "tokenizer.vocab", encoding="utf-8")]
    (out_dir / "vocab.txt").write_text("".join((p[1:] if p.startswith("\u2581") else "##" + p) + "\n"
                                               for p in pieces if p), encoding="utf-8")
    return out_dir


def demo_config(tokenizer_dir, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, att_context=ATT_CONTEXT,
                subsampling=SUBSAMPLING) -> dict:
    from brogue.export.configs import streaming_model_config

    cfg = streaming_model_config("ctc", tokenizer_dir=tokenizer_dir, d_model=d_model, n_layers=n_layers,
                                 n_heads=n_heads, att_context_size=att_context)
    cfg["encoder"]["subsampling_factor"] = subsampling
    cfg["encoder"]["pos_emb_max_len"] = 512
    for k in ("dropout", "dropout_pre_encoder", "dropout_att"):
        cfg["encoder"][k] = 0.05
    return cfg


def data_config(manifest, batch_size, shuffle, max_duration=16.0) -> dict:
    return {"manifest_filepath": str(manifest), "sample_rate": 16000,
            "batch_size": batch_size, "shuffle": shuffle, "max_duration": max_duration, "min_duration": 0.3,
            "num_workers": 0, "pin_memory": False, "trim_silence": False}


def bucketed_manifest(rows: list[dict], out: Path, batch_size: int, seed: int, epochs: int = 40,
                      max_cps: float = 22.0, sortagrad: bool = True) -> Path:
    """``epochs`` passes over ``rows`` (manifest rows, audio paths resolved) in one file, for use with shuffle=False. Every pass is cut into
    batches of similar duration (little padding); the first pass runs them shortest first (SortaGrad:
    CTC leaves its blank plateau sooner on short utterances; off with ``sortagrad=False``, as when
    continuing a trained model), later passes in a seeded random order.
    Rows faster than ``max_cps`` characters per second (broken synthesis) are left out."""
    import random

    rng = random.Random(seed)
    rows = [r for r in rows if len(r["text"]) / r["duration"] <= max_cps]
    with open(out, "w") as f:
        for epoch in range(epochs):
            rng.shuffle(rows)
            rows.sort(key=lambda r: round(r["duration"], 1))
            batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
            if epoch or not sortagrad:
                rng.shuffle(batches)
            for b in batches:
                for r in b:
                    f.write(json.dumps(r) + "\n")
    return out


def greedy_wer(model, rows: list[dict]) -> tuple[float, list[str]]:
    """Greedy CTC WER (%) of ``model`` on ``rows`` (full-context forward: a progress probe only)."""
    import jiwer
    import soundfile as sf
    import torch

    hyps = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for r in rows:
            x, _ = sf.read(r["audio_filepath"], dtype="float32")
            lp, ln, _ = model.forward(input_signal=torch.from_numpy(x)[None], input_signal_length=torch.tensor([len(x)]))
            ids = lp[0, : int(ln[0])].argmax(-1).tolist()
            blank = lp.shape[-1] - 1
            out, prev = [], None
            for i in ids:
                if i != prev and i != blank:
                    out.append(i)
                prev = i
            if hasattr(model, "tokenizer"):
                hyps.append(model.tokenizer.ids_to_text(out))
            else:
                hyps.append("".join(model.decoder.vocabulary[i] for i in out))
    model.train(was_training)
    refs = [r["text"] for r in rows]
    return 100 * jiwer.wer(refs, [h if h.strip() else "<empty>" for h in hyps]), hyps


def feature_mean_std(model, manifest: Path, n: int = 64) -> tuple[float, float]:
    """Mean and standard deviation of the model's (un-normalised) log-mel features over the first
    ``n`` rows of ``manifest``."""
    import soundfile as sf
    import torch

    rows = [json.loads(l) for l in open(manifest)][:n]
    feats = []
    with torch.no_grad():
        for r in rows:
            x, _ = sf.read(r["audio_filepath"], dtype="float32")
            f, fl = model.preprocessor(input_signal=torch.from_numpy(x)[None], length=torch.tensor([len(x)]))
            feats.append(f[0, :, : int(fl[0])].flatten())
    allf = torch.cat(feats)
    return float(allf.mean()), float(allf.std())


def fold_feature_norm(model, manifest: Path, n: int = 64) -> tuple[float, float]:
    """Fold a global feature normalisation into the first subsampling conv (weights / std, bias
    shifted by mean): the un-normalised log-mels (mean ~ -11, std ~ 5; "NA" normalisation keeps the
    front end streamable) otherwise start the conv stack on a large DC offset, and CTC training
    stays on its blank plateau far longer. Only the initial weights change; the graph is the same."""
    import torch

    mu, sd = feature_mean_std(model, manifest, n)
    with torch.no_grad():
        conv = model.encoder.pre_encode.conv[0]
        conv.weight /= sd
        conv.bias -= mu * conv.weight.sum(dim=(1, 2, 3))
    return mu, sd


def add_spec_augment(model, manifest: Path, spec: str):
    """SpecAugment for this training run only (``spec`` = "FREQ_MASKS,FREQ_WIDTH,TIME_MASKS,TIME_WIDTH";
    a TIME_WIDTH below 1 is a fraction of the utterance). Masked cells take the features' mean, not
    NeMo's default 0.0: these log-mels are un-normalised (mean ~ -11), so 0.0 would be a loud burst.
    Returns the module; the caller removes it before saving, so the .nemo (and ``brogue adapt`` on it)
    trains without SpecAugment unless asked again."""
    from nemo.collections.asr.modules import SpectrogramAugmentation

    fm, fw, tm, tw = spec.split(",")
    mu, _ = feature_mean_std(model, manifest)
    model.spec_augmentation = SpectrogramAugmentation(freq_masks=int(fm), freq_width=int(fw), time_masks=int(tm),
                                                      time_width=float(tw) if float(tw) < 1 else int(tw),
                                                      mask_value=mu)
    return model.spec_augmentation


def grow_layers(model, extra: int):
    """A copy of ``model`` with ``extra`` conformer layers on top. Each new layer starts as a copy of
    the last one with the output projections of its four residual branches (both feed-forwards,
    attention, convolution) zeroed, so it passes its input through its final LayerNorm alone: the
    grown model starts from the old one's output, renormalised, and training shapes the new layers
    from there. The vocabulary, front end and streaming settings are the old model's."""
    import copy

    import torch
    from omegaconf import open_dict

    if extra < 1:
        raise ValueError(f"grow by at least one layer, not {extra}")
    cfg = copy.deepcopy(model.cfg)
    n = cfg.encoder.n_layers
    with open_dict(cfg):
        cfg.encoder.n_layers = n + extra
        cfg.train_ds = cfg.validation_ds = cfg.test_ds = None  # the caller sets this run's data
    grown = type(model)(cfg=cfg)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new = tuple(f"encoder.layers.{i}." for i in range(n, n + extra))  # the only weights the old model lacks
    if unexpected or not all(k.startswith(new) for k in missing):
        raise RuntimeError(f"grown model does not match the old one: {unexpected or missing}")
    last = grown.encoder.layers[n - 1]
    for layer in grown.encoder.layers[n:]:
        layer.load_state_dict(last.state_dict())
        for proj in (layer.feed_forward1.linear2, layer.self_attn.linear_out, layer.conv.pointwise_conv2,
                     layer.feed_forward2.linear2):
            torch.nn.init.zeros_(proj.weight)
            if proj.bias is not None:
                torch.nn.init.zeros_(proj.bias)
    return grown


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="corpus folder (base_train.json)")
    ap.add_argument("--train", nargs="+", default=["base_train.json"],
                    help="training manifests in --data (the demo's fourth budget: base_train.json base_train2.json)")
    ap.add_argument("--spec-augment", metavar="FM,FW,TM,TW",
                    help="SpecAugment for this run, e.g. 2,15,5,0.05 (2 frequency masks up to 15 mels, 5 time "
                    "masks up to 5%% of the utterance); not saved into the .nemo")
    ap.add_argument("--out", type=Path, required=True, help=".nemo to write")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=50.0, help="wall-clock budget for training")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", default="char", help="'char' (28 characters) or a SentencePiece BPE size, e.g. 256")
    ap.add_argument("--subsampling", type=int, default=SUBSAMPLING)
    ap.add_argument("--layers", type=int, default=N_LAYERS)
    ap.add_argument("--d-model", type=int, default=D_MODEL)
    ap.add_argument("--init", type=Path, help="continue from this .nemo (its weights, vocabulary and architecture; "
                    "--vocab/--subsampling/--layers/--d-model are then ignored): a second budget on the same data")
    ap.add_argument("--grow-layers", type=int, default=0,
                    help="with --init: add this many conformer layers on top (see grow_layers) before training")
    ap.add_argument("--probe-every", type=int, default=200, help="print a greedy WER on 16 base-test rows every N steps")
    a = ap.parse_args(argv)
    if a.grow_layers and not a.init:
        ap.error("--grow-layers grows a trained model: give it --init")

    import lightning.pytorch as pl
    import torch
    from omegaconf import OmegaConf

    from brogue.export.configs import model_class

    torch.set_num_threads(a.threads)
    pl.seed_everything(a.seed)
    model = None
    if a.init:
        from nemo.core import ModelPT

        model = ModelPT.restore_from(str(a.init), map_location="cpu")
        if a.grow_layers:
            model = grow_layers(model, a.grow_layers)
            print(f"grown to {model.cfg.encoder.n_layers} layers", flush=True)
        cfg = OmegaConf.to_container(model.cfg, resolve=True)
    else:
        tok = None if a.vocab == "char" else train_tokenizer(a.data / a.train[0],
                                                             Path(str(a.out) + ".tokenizer"), int(a.vocab))
        cfg = demo_config(tok, d_model=a.d_model, n_layers=a.layers, subsampling=a.subsampling)
    probe = read_manifest(a.data / "base_test.json", limit=16)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    # audio paths resolved against each manifest's folder: the run's manifest lies beside --out
    rows = [r for m in a.train for r in read_manifest((a.data / m).resolve())]
    train = bucketed_manifest(rows, Path(str(a.out) + ".train_manifest.json"),
                              a.batch_size, a.seed, sortagrad=a.init is None)
    cfg["train_ds"] = data_config(train, a.batch_size, False)
    cfg["optim"] = {"name": "adamw", "lr": a.lr, "betas": [0.9, 0.98], "weight_decay": 1e-3}
    budget = a.minutes * 60
    hours = sum(r["duration"] for r in rows) / 3600

    class Log(pl.Callback):
        def __init__(self):
            self.t0 = time.time()
            self.loss = float("nan")

        def on_train_batch_start(self, trainer, module, batch, idx):
            s = trainer.global_step
            frac = min((time.time() - self.t0) / budget, 1.0)
            lr = a.lr * min(1.0, (s + 1) / a.warmup) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in trainer.optimizers[0].param_groups:
                g["lr"] = lr

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.loss = float(loss)
            s = trainer.global_step
            if a.probe_every and s % a.probe_every == 0 and s:
                wer, hyps = greedy_wer(module, probe)
                print(f"step {s} probe WER {wer:.1f}% e.g. {hyps[0]!r} (ref {probe[0]['text']!r})", flush=True)
            if s % 25 == 0:
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"step {s} epoch {trainer.current_epoch} loss {self.loss:.3f} "
                      f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e} {time.time() - self.t0:.0f}s "
                      f"peak {rss:.0f} MB", flush=True)

    log = Log()
    trainer = pl.Trainer(accelerator=a.accelerator, devices=1, precision=32, max_steps=a.max_steps,
                         max_time={"minutes": a.minutes}, enable_checkpointing=False, logger=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[log], gradient_clip_val=1.0)
    if model is not None:
        model.set_trainer(trainer)
        model.cfg = OmegaConf.create(cfg)  # this run's train_ds and optim (configure_optimizers reads cfg.optim)
        model.setup_training_data(model.cfg.train_ds)
        mu = sd = None  # the feature normalisation was folded when the model was first trained
        print(f"continuing from {a.init}", flush=True)
    else:
        model = model_class("ctc", tok is not None)(cfg=OmegaConf.create(cfg), trainer=trainer)
        mu, sd = fold_feature_norm(model, train)
        print(f"feature mean {mu:.2f} std {sd:.2f} folded into the first conv", flush=True)
    if a.spec_augment:
        print(f"SpecAugment this run: {add_spec_augment(model, train, a.spec_augment)}", flush=True)
    t0 = log.t0 = time.time()
    trainer.fit(model)
    seconds = time.time() - t0
    model.spec_augmentation = None  # this run's only (the config never held it)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(a.out))
    stats = {"steps": trainer.global_step, "epochs": trainer.current_epoch, "train_seconds": round(seconds),
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
             "last_loss": log.loss, "train_hours_audio": round(hours, 3),
             "params": sum(p.numel() for p in model.parameters()), "batch_size": a.batch_size, "lr": a.lr,
             "minutes_budget": a.minutes, "folded_feature_mean_std": None if a.init else [round(mu, 3), round(sd, 3)],
             "threads": a.threads, "accelerator": a.accelerator, "init": str(a.init) if a.init else None,
             "train": a.train, "spec_augment": a.spec_augment, "grow_layers": a.grow_layers,
             "layers": model.cfg.encoder.n_layers}
    Path(str(a.out) + ".train.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
