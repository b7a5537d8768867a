"""The accuracy table of the demo model, written into docs/accuracy.md.

    python recipes/report.py --data /work/data            # evaluate, print, update docs/accuracy.md

For each split of the held-out set (``--splits heldout``, the default: voice families and text
sources no training split has, written by recipes/corpus_heldout.py; ``--splits infamily``: the first
corpus's test splits), under LM beam search (as served) and greedy decoding (the acoustic model
alone): the exported base model alone and with every adapter (the split's own, and the other
four: the table's wrong-adapter column is the one of them that does best on the split, the
strictest sanity check; the full matrix follows the table), all streamed chunk by chunk through
``StreamingRunner`` exactly as ``brogue eval`` does; and pocketsphinx (the PyPI wheel's bundled
en-us acoustic model, language model and dictionary) on the same audio. The base split is also
run with every adapter (none may raise its WER by over 10% relative); every split is broken down by
voice family (the manifest's ``family`` field), for the base model alone and with its own adapter.
pocketsphinx results are cached in DATA/pocketsphinx_<manifest>.json (``--no-cache`` recomputes).
Results also go to recipes/accuracy.json (``--splits infamily``: recipes/accuracy-infamily.json).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADAPTED = ["scottish", "caribbean", "indian", "german", "medical"]
KIND = {"scottish": "accent", "caribbean": "accent", "indian": "accent", "german": "accent", "medical": "domain"}
# The held-out split (recipes/corpus_heldout.py: voice families and text sources no training split
# has) is the one reported; the first corpus's in-family test splits are kept for comparison.
SPLITS = {
    "heldout": {"base": "base_heldout.json", "base_phone": "base_heldout_phone.json",
                **{s: f"{s}_heldout.json" for s in ADAPTED}},
    "infamily": {"base": "base_test.json", "base_ffp": "base_test_ffp.json", **{s: f"{s}_test.json" for s in ADAPTED}},
}
MARKER = {"heldout": "accuracy-table", "infamily": "accuracy-table-infamily"}
START, END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
SECTION = "## Accuracy of the demo model"
INTRO = """Measured on the held-out split (recipes/corpus_heldout.py): voice families and text sources
that no training split holds. `python recipes/report.py --data DATA_DIR` writes the tables; the
section's text around them is kept."""


def pocketsphinx_hyps(rows: list[dict], cache: Path | None) -> list[str]:
    if cache is not None and cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("audio") == [r["audio_filepath"] for r in rows]:
            return got["hyps"]
    import numpy as np
    import soundfile as sf
    from pocketsphinx import Decoder

    dec = Decoder(samprate=16000, logfn="/dev/null")
    hyps = []
    for r in rows:
        a, sr = sf.read(r["audio_filepath"], dtype="int16")
        assert sr == 16000, r["audio_filepath"]
        dec.start_utt()
        dec.process_raw(np.ascontiguousarray(a).tobytes(), full_utt=True)
        dec.end_utt()
        h = dec.hyp()
        hyps.append(h.hypstr if h is not None else "")
    if cache is not None:
        cache.write_text(json.dumps({"audio": [r["audio_filepath"] for r in rows], "hyps": hyps}))
    return hyps


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--model-dir", type=Path, default=REPO / "model_repo" / "exported" / "demo")
    ap.add_argument("--store", type=Path, default=REPO / "model_repo" / "adapters")
    ap.add_argument("--readme", type=Path, default=REPO / "docs" / "accuracy.md")
    ap.add_argument("--out", type=Path, default=REPO / "recipes" / "accuracy.json")
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--only-pocketsphinx", action="store_true", help="fill the pocketsphinx cache and stop")
    ap.add_argument("--splits", choices=sorted(SPLITS), default="heldout",
                    help="heldout (voice families and text sources no training split has; the default) or "
                         "infamily (the first corpus's test splits: unseen sentences, training's voice families)")
    a = ap.parse_args(argv)

    from brogue.clients.eval import read_manifest

    splits = SPLITS[a.splits]
    rows = {s: read_manifest(a.data / m) for s, m in splits.items()}
    ps = {}
    for s, m in splits.items():
        t0 = time.time()
        ps[s] = pocketsphinx_hyps(rows[s], None if a.no_cache else a.data / f"pocketsphinx_{Path(m).stem}.json")
        print(f"pocketsphinx {s}: {time.time() - t0:.0f} s", flush=True)
    if a.only_pocketsphinx:
        return

    from brogue.adapters import BaseSpec
    from brogue.engine.runner import StreamingRunner
    from brogue.adapters.store import AdapterStore

    store = AdapterStore(a.store)
    res: dict = {"model": str(a.model_dir.relative_to(REPO)) if a.model_dir.is_relative_to(REPO) else str(a.model_dir),
                 "decoders": {}}
    for decoder in ("lm", "greedy"):
        runner = StreamingRunner(a.model_dir, slots=1 + len(ADAPTED), decoder=decoder)
        meta = runner.meta
        base = BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model, meta.max_adapter_dim)
        slot, refs = {}, {}
        for i, name in enumerate(ADAPTED, 1):
            ref = f"{name}@{store.versions(name)[-1]}"
            w = store.load(ref, base)
            runner.bank.write(i, w.ln_weight, w.ln_bias, w.down, w.up)
            runner.slot_lm_setter(w)(i)  # a domain adapter's LM, under LM decoding
            slot[name], refs[name] = i, ref
        res["adapters"] = refs
        res["decoders"][decoder] = evaluate_splits(runner, splits, rows, ps, slot, refs, decoder)
    if res["decoders"]["lm"] is None:
        del res["decoders"]["lm"]
    blocks = []
    for decoder, splits_res in res["decoders"].items():
        table, each = make_table(splits_res)
        checks = make_checks(splits_res)
        res.setdefault("tables", {})[decoder] = table
        res.setdefault("checks", {})[decoder] = checks
        blocks += [f"**{TITLES[decoder]}**", "", table, "", f"Base split with each adapter enabled: {each}.", "",
                   "By voice family (WER, utterances; base model alone, then with the split's own adapter):", "",
                   make_families(splits_res), "",
                   "Every adapter on every split (rows: test split; columns: adapter; bold: the split's own):", "",
                   make_matrix(splits_res), "", *[f"- {c}" for c in checks], ""]
    out = a.out if a.splits == "heldout" else a.out.with_name(a.out.stem + f"-{a.splits}.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    start, end = (m.replace("accuracy-table", MARKER[a.splits]) for m in (START, END))
    block = "\n".join([start, "", *blocks, end])
    print(block)
    if not a.no_readme:
        update_readme(a.readme, block, start, end)


TITLES = {"lm": "Served decoding: CTC beam search with the character LM (and the medical adapter's domain LM)",
          "greedy": "The acoustic model alone: greedy CTC (as NeMo's streaming decodes)"}


def evaluate_splits(runner, splits, rows, ps, slot, refs, decoder):
    """WERs of every split with the base model alone and with each adapter; None when the runner
    cannot decode with ``decoder`` (a model without an LM)."""
    from brogue.clients.eval import error_rates, load_audio, transcribe

    if runner.decoder != decoder:
        return None
    out = {}
    rate = runner.meta.mel.sample_rate
    for s in splits:
        audios = [load_audio(r["audio_filepath"], rate) for r in rows[s]]
        texts = [r["text"] for r in rows[s]]
        hours = sum(len(x) for x in audios) / rate / 3600
        d = {"utterances": len(texts), "minutes": round(hours * 60, 1)}

        def run(sl, by_voice=False):
            hyps = transcribe(runner, audios, sl)
            w, c = error_rates(texts, hyps)
            got = {"wer": w, "cer": c, "examples": list(zip(texts[:3], hyps[:3]))}
            if by_voice:
                got["by_voice"] = by_voice_family(rows[s], texts, hyps)
            return got

        t0 = time.time()
        d["base"] = run(0, by_voice=True)
        if s in ADAPTED or s == "base":
            d["with_each_adapter"] = {n: run(slot[n], by_voice=n == s) | {"name": refs[n]} for n in ADAPTED}
        if s in ADAPTED:
            d["adapter"] = d["with_each_adapter"][s]
            d["wrong_adapter"] = best_wrong(d, s)
        w, c = error_rates(texts, ps[s])
        d["pocketsphinx"] = {"wer": w, "cer": c}
        out[s] = d
        print(f"{decoder} {s}: base {pct(d['base']['wer'])} ({time.time() - t0:.0f} s)", flush=True)
    return out


def make_table(res_splits) -> tuple[str, str]:
    label = {"base": "base (all voices)", "base_ffp": "base: flite/Festival/pico part",
             "base_phone": "base, telephone path (8 kHz mu-law)"}
    lines = ["| test split | minutes | base WER | adapter WER | wrong-adapter WER | pocketsphinx WER |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s, d in res_splits.items():
        if s in ADAPTED:
            own, wrong = d["adapter"], d["wrong_adapter"]
            rel = (d["base"]["wer"] - own["wer"]) / d["base"]["wer"] if d["base"]["wer"] else 0.0
            a_cell = f"{pct(own['wer'])} ({'-' if rel >= 0 else '+'}{abs(rel) * 100:.0f}% rel.)"
            w_cell = f"{pct(wrong['wer'])} (best other: {wrong['name'].split('@')[0]})"
            name = f"{s} ({KIND[s]})"
        elif s == "base":
            worst = max(d["with_each_adapter"].items(), key=lambda kv: kv[1]["wer"])
            a_cell = "n/a"
            w_cell = f"{pct(worst[1]['wer'])} (worst: {worst[0]})"
            name = label[s]
        else:
            a_cell = w_cell = "n/a"
            name = label[s]
        lines.append(f"| {name} | {d['minutes']} | {pct(d['base']['wer'])} | {a_cell} | {w_cell} | "
                     f"{pct(d['pocketsphinx']['wer'])} |")
    b = res_splits["base"]
    each = ", ".join(f"{n} {pct(v['wer'])}" for n, v in b["with_each_adapter"].items())
    return "\n".join(lines), each


def voice_family(voice: str) -> str:
    """"espeak:en-us+m7" -> "espeak-ng en-us"; "espeak:mb-us1" -> "mbrola (via espeak-ng)";
    "festival:kal_diphone" -> "festival"."""
    engine, _, name = voice.partition(":")
    if engine == "espeak":
        return "mbrola (via espeak-ng)" if name.startswith("mb-") else "espeak-ng " + name.split("+")[0]
    return engine or "unknown"


def by_voice_family(rows: list[dict], texts: list[str], hyps: list[str]) -> dict:
    """WER per voice family: the manifest's ``family`` field (recipes/corpus_heldout.py writes it),
    else one made from its ``voice`` field (recipes/corpus.py writes that)."""
    from brogue.clients.eval import error_rates

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.get("family") or voice_family(r.get("voice", "")), []).append(i)
    return {f: {"utterances": len(ix), "wer": error_rates([texts[i] for i in ix], [hyps[i] for i in ix])[0]}
            for f, ix in sorted(groups.items())}


def make_families(res_splits) -> str:
    """One line per split: WER by voice family, base model alone (and with the split's own adapter)."""
    lines = []
    for s, d in res_splits.items():
        own = d.get("adapter", {}).get("by_voice", {})
        cells = [f"{f} {pct(v['wer'])}" + (f" -> {pct(own[f]['wer'])}" if f in own else "") + f" ({v['utterances']})"
                 for f, v in d["base"].get("by_voice", {}).items()]
        lines.append(f"- {s}: " + ", ".join(cells))
    return "\n".join(lines)


def best_wrong(d: dict, split: str) -> dict:
    """The other set's adapter that does best on ``split``: the strictest wrong-adapter check."""
    return min((v for n, v in d["with_each_adapter"].items() if n != split), key=lambda v: v["wer"])


def make_matrix(res_splits) -> str:
    """WER of every test split (rows) with no adapter and with each adapter (columns)."""
    lines = ["| test split | no adapter | " + " | ".join(ADAPTED) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in ADAPTED) + " |"]
    for s, d in res_splits.items():
        if "with_each_adapter" not in d:
            continue
        cells = [f"**{pct(v['wer'])}**" if n == s else pct(v["wer"]) for n, v in d["with_each_adapter"].items()]
        lines.append(f"| {s} | {pct(d['base']['wer'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_checks(res_splits) -> list[str]:
    checks = []
    for s in ADAPTED:
        d = res_splits[s]
        rel = (d["base"]["wer"] - d["adapter"]["wer"]) / max(d["base"]["wer"], 1e-9)
        checks.append(f"{s} adapter cuts WER by {rel * 100:.0f}% relative (target >= 30%): "
                      f"{'met' if rel >= 0.30 else 'NOT met'}")
    for s in ADAPTED:
        d = res_splits[s]
        wrong, base = d["wrong_adapter"], d["base"]["wer"]
        helped = sorted(n for n, v in d["with_each_adapter"].items() if n != s and v["wer"] < base)
        checks.append(f"wrong adapters on {s}: best {wrong['name'].split('@')[0]} {pct(wrong['wer'])} against base "
                      f"{pct(base)} (must not help): {'met' if not helped else 'NOT met'}"
                      + (f" ({len(helped)} of {len(ADAPTED) - 1} help: {', '.join(helped)})" if helped else ""))
    for s in ADAPTED:
        d = res_splits[s]
        best = min(d["with_each_adapter"].items(), key=lambda kv: kv[1]["wer"])[0]
        checks.append(f"{s}'s own adapter is the best of all {len(ADAPTED)} on its split: "
                      f"{'yes' if best == s else f'no ({best} is)'}")
    b = res_splits["base"]
    for n, v in b["with_each_adapter"].items():
        rel = (v["wer"] - b["base"]["wer"]) / max(b["base"]["wer"], 1e-9)
        checks.append(f"{n} adapter changes base-set WER by {rel * 100:+.0f}% relative (target <= +10%): "
                      f"{'met' if rel <= 0.10 else 'NOT met'}")
    checks.append(f"base WER on the base split {pct(b['base']['wer'])} (target < 15%): "
                  f"{'met' if b['base']['wer'] < 0.15 else 'NOT met'}")
    if "base_ffp" in res_splits:
        ffp = res_splits["base_ffp"]
        checks.append(f"base WER {pct(ffp['base']['wer'])} vs pocketsphinx {pct(ffp['pocketsphinx']['wer'])} on the "
                      f"flite/Festival/pico audio: "
                      f"{'met' if ffp['base']['wer'] < ffp['pocketsphinx']['wer'] else 'NOT met'}")
    return checks


def update_readme(readme: Path, block: str, start: str = START, end: str = END) -> None:
    """Replace the generated block between ``start`` and ``end``; create the section before "## Docs"
    (or at the end) if missing."""
    text = readme.read_text()
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    elif "\n## Docs\n" in text:
        text = text.replace("\n## Docs\n", f"\n{SECTION}\n\n{INTRO}\n\n{block}\n\n## Docs\n", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}\n\n{block}\n"
    readme.write_text(text)


if __name__ == "__main__":
    main()
