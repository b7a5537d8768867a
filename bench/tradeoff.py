"""Adapter or full fine-tune: the trade-off on the demo's accent and domain sets, measured side by side.

For each set, one adapter (``brogue adapt``) and one full fine-tune (``brogue finetune``) are trained
from the same base (``model_repo/demo.nemo``), on the same manifest, with the same replay (half of
each batch base training speech, distilled to the base's output, weight 5) and the same number of
steps, each in a process of its own on this machine. Then, per set and method:

- **accuracy** (phase ``eval``): WER on the set's test split and on the base test split (the harm to
  everyone else), streamed through the engine with greedy decoding, as served;
- **cost** (phase ``serve``): training time; size on disk (the adapter entry, or the model entry);
  serving memory (the RSS of the Triton python-backend process that serves it: the base's process,
  whose bank holds every adapter, or one process per model version); and throughput when 8 tenants
  share one server: 8 adapter tenants in one bank of the base model, against 8 tenants on 8 model
  versions (the five fine-tunes, and three of them again under other names: as many processes, none
  batching with another). Throughput is audio seconds transcribed per wall second, with every
  tenant's streams sent at once and unpaced; the median of 3 alternating runs with the range.

    .venv/bin/python -m brogue.bench.tradeoff --data /work/data --work /tmp/tradeoff --phase train
    .venv/bin/python -m brogue.bench.tradeoff --data /work/data --work /tmp/tradeoff --phase eval
    .venv/bin/python -m brogue.bench.tradeoff --data /work/data --work /tmp/tradeoff --phase serve \\
        --json docs/performance/tradeoff.json

Each phase keeps its results in ``WORK/results.json`` and skips what is already there, so a phase can
be re-run after an interruption. The test splits share voices and sentence templates with the
training splits (the held-out split of the demo corpus is not built yet; docs/accuracy.md), so both
methods' cuts are optimistic in the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .tradeoff_serving import measure, table_rows

REPO = Path(__file__).resolve().parent.parent
SETS = ("scottish", "caribbean", "indian", "german", "medical")
STEPS = 300
TRAIN = {  # the demo recipe's adapter settings (recipes/make_demo.sh); the fine-tune's learning rate is its own
    "batch_size": 16, "replay_fraction": 0.5, "replay_loss": "distill", "distill_weight": 5.0,
}
ADAPTER_LR, FULL_LR = 3e-3, 2e-4
METHODS = ("adapter", "full")


def _load(work: Path) -> dict:
    path = work / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(work: Path, results: dict) -> None:
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# -- phase: train ---------------------------------------------------------------------------------

def train_one(kind: str, name: str, data: Path, work: Path, steps: int, full_lr: float = FULL_LR) -> dict:
    """Train one adapter or fine-tune (in this process) and return its record."""
    import resource

    base = REPO / "model_repo" / "demo.nemo"
    manifest, replay = data / f"{name}_train.json", data / "base_train.json"
    t0 = time.time()
    if kind == "adapter":
        from brogue.export.adapt import train_adapter

        r = train_adapter(base, manifest, name, store=work / "adapters", steps=steps, lr=ADAPTER_LR, version="tradeoff",
                          replay=replay, progress=False, **TRAIN)
        entry, seconds = r.entry, r.seconds
    else:
        from brogue.export.finetune import finetune

        r = finetune(base, manifest, name, out_nemo=work / "nemo" / f"{name}.nemo", export_dir=work / "exports" / name,
                     store=work / "models", version="v1", steps=steps, lr=full_lr, warmup=30, replay=replay,
                     progress=False, **TRAIN)
        entry, seconds = work / "models" / name / "v1", r.seconds
    return {"kind": kind, "set": name, "lr": ADAPTER_LR if kind == "adapter" else full_lr, "steps": r.steps,
            "train_seconds": round(seconds, 1), "wall_seconds": round(time.time() - t0, 1), "first_loss": round(r.first_loss, 3),
            "last_loss": round(r.last_loss, 3), "entry": str(entry), "disk_bytes": _dir_bytes(entry),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def phase_train(data: Path, work: Path, sets, steps: int, methods=METHODS, full_lr: float = FULL_LR) -> None:
    results = _load(work)
    for name in sets:
        for kind in methods:
            key = f"train/{kind}/{name}"
            if key in results:
                continue
            out = work / f"{kind}-{name}.json"
            cmd = [sys.executable, "-m", "brogue.bench.tradeoff", "--data", str(data), "--work", str(work),
                   "--train-one", kind, name, "--steps", str(steps),
                   "--full-lr", str(full_lr), "--out", str(out)]
            print(f"training {kind} {name} ...", flush=True)
            subprocess.run(cmd, check=True, stdout=(work / f"{kind}-{name}.log").open("w"), stderr=subprocess.STDOUT)
            results = _load(work)
            results[key] = json.loads(out.read_text())
            _save(work, results)
            print(f"  {results[key]['train_seconds']} s, {results[key]['disk_bytes'] / 1e6:.2f} MB", flush=True)


# -- phase: eval ----------------------------------------------------------------------------------

def phase_eval(data: Path, work: Path, sets, methods=METHODS) -> None:
    from brogue.clients.eval import evaluate, make_runner

    results = _load(work)
    base_dir = REPO / "model_repo" / "exported" / "demo"
    if "eval/base" not in results:
        runner, _ = make_runner(base_dir, None, work / "adapters", decoder="greedy")
        results["eval/base"] = {f"{s}_test": round(evaluate(data / f"{s}_test.json", model_dir=base_dir, runner=runner,
                                                            decoder="greedy").wer, 4) for s in (*sets, "base")}
        _save(work, results)
    for name in sets:
        for kind in methods:
            key = f"eval/{kind}/{name}"
            if key in results:
                continue
            if kind == "adapter":
                runner, ref = make_runner(base_dir, f"{name}@tradeoff", work / "adapters", decoder="greedy")
            else:
                runner, ref = make_runner(work / "models" / name / "v1", None, work / "adapters", decoder="greedy")
            wer = {split: round(evaluate(data / f"{split}.json", model_dir=None, adapter=ref, runner=runner).wer, 4)
                   for split in (f"{name}_test", "base_test")}
            results[key] = {"own_wer": wer[f"{name}_test"], "base_wer": wer["base_test"]}
            _save(work, results)
            print(f"{kind:8s} {name:10s} own {wer[f'{name}_test']:.3f} base {wer['base_test']:.3f}", flush=True)


# -- phase: serve ---------------------------------------------------------------------------------

def phase_serve(data: Path, work: Path, sets, json_out: Path | None) -> None:
    results = _load(work)
    results["serve"] = measure(data, work, list(sets))
    _save(work, results)
    table = table_rows(results, sets)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"results": results, "table": table}, indent=1) + "\n")
    print("\n".join(markdown(table)))


def markdown(table: list[dict]) -> list[str]:
    """The per-set rows of docs/models.md's table (WER as %: the base model's → the method's)."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    out = ["| set | method | WER on the set | WER on base speech | training | on disk |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in table:
        out.append(f"| {r['set']} | {r['method']} | {pct(r['own_wer_base_model'])} → {pct(r['own_wer'])} "
                   f"| {pct(r['base_wer_base_model'])} → {pct(r['base_wer'])} | {r['train_seconds']} s "
                   f"| {r['disk_mb']} MB |")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--phase", choices=("train", "eval", "serve"))
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="phases train and eval")
    ap.add_argument("--full-lr", type=float, default=FULL_LR, help="the full fine-tune's peak learning rate")
    ap.add_argument("--train-one", nargs=2, metavar=("KIND", "SET"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="phase serve: write the table's figures here")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.train_one:
        record = train_one(*a.train_one, a.data, a.work, a.steps, a.full_lr)
        a.out.write_text(json.dumps(record, indent=1) + "\n")
    elif a.phase == "train":
        phase_train(a.data, a.work, a.sets, a.steps, a.methods, a.full_lr)
    elif a.phase == "eval":
        phase_eval(a.data, a.work, a.sets, a.methods)
    elif a.phase == "serve":
        phase_serve(a.data, a.work, a.sets, a.json)


if __name__ == "__main__":
    main()
