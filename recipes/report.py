"""The accuracy table of the demo model, written into docs/accuracy.md.

    python recipes/report.py --data /work/data            # evaluate, print, update docs/accuracy.md

For each test split, under LM beam search (as served) and greedy decoding (the acoustic model
alone): the exported base model alone and with every adapter (the split's own, and the other
four: the table's wrong-adapter column is the one of them that does best on the split, the
strictest sanity check; the full matrix follows the table), all streamed chunk by chunk through
``StreamingRunner`` exactly as ``brogue eval`` does; and pocketsphinx (the PyPI wheel's bundled
en-us acoustic model, language model and dictionary) on the same audio. The base test split is also
run with every adapter (none may raise its WER by over 10% relative), broken down by voice family,
and reported for its flite/Festival/pico part, where pocketsphinx does best. pocketsphinx results
are cached in DATA/pocketsphinx_<split>.json (``--no-cache`` recomputes). Results also go to
recipes/accuracy.json.
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
START, END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
SECTION = "## Accuracy of the demo model"
INTRO = """The demo model (`model_repo/exported/demo`, source `model_repo/demo.nemo`) and its adapters
(`model_repo/adapters/NAME/v1`) come from the recipe in `recipes/` (`recipes/make_demo.sh` runs it
all): a synthetic corpus from Debian TTS voices (`brogue corpus`), a small cache-aware
FastConformer-CTC trained on the base set only (`recipes/train_base.py`), a character LM from every
wordnet sentence that no test or dev split speaks (`brogue lm`, weights tuned on the dev split; text
only, 27k sentences, 24k of them spoken in base training), and one LinearAdapter per accent /
domain set trained with the base frozen (`brogue adapt`: half of each batch is base training speech
on which the adapted model is held to the base model's output, see "Replay" below; the domain
adapter also carries its sentences as a domain LM). Two tables: as served (beam search with the LM),
and the acoustic model alone (greedy, as NeMo's streaming decodes). Word error rates on the held-out
test splits (unseen sentences, unseen speaker variants), streamed chunk by chunk through the
exported model as `brogue eval` does; pocketsphinx is the PyPI wheel's en-us model on the same
audio. Made by `python recipes/report.py --data DATA_DIR`; all speech is synthetic, so these numbers
say how well adapters separate accents and domains, not how the model does on real speech."""


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
    a = ap.parse_args(argv)

    from brogue.clients.eval import read_manifest

    splits = {"base": "base_test.json", "base_ffp": "base_test_ffp.json"}
    splits.update({s: f"{s}_test.json" for s in ADAPTED})
    rows = {s: read_manifest(a.data / m) for s, m in splits.items()}
    ps = {}
    for s in splits:
        t0 = time.time()
        ps[s] = pocketsphinx_hyps(rows[s], None if a.no_cache else a.data / f"pocketsphinx_{s}.json")
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
        voices = ", ".join(f"{f} {pct(v['wer'])} ({v['utterances']})"
                           for f, v in splits_res["base"]["base"].get("by_voice", {}).items())
        blocks += [f"**{TITLES[decoder]}**", "", table, "", f"Base test split with each adapter enabled: {each}.", "",
                   f"Base test split by voice, base model alone (WER, utterances): {voices}.", "",
                   "Every adapter on every split (rows: test split; columns: adapter; bold: the split's own):", "",
                   make_matrix(splits_res), "", *[f"- {c}" for c in checks], ""]
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    block = "\n".join([START, "", *blocks, END])
    print(block)
    if not a.no_readme:
        update_readme(a.readme, block)


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
        d["base"] = run(0, by_voice=s == "base")
        if s in ADAPTED or s == "base":
            d["with_each_adapter"] = {n: run(slot[n]) | {"name": refs[n]} for n in ADAPTED}
        if s in ADAPTED:
            d["adapter"] = d["with_each_adapter"][s]
            d["wrong_adapter"] = best_wrong(d, s)
        w, c = error_rates(texts, ps[s])
        d["pocketsphinx"] = {"wer": w, "cer": c}
        out[s] = d
        print(f"{decoder} {s}: base {pct(d['base']['wer'])} ({time.time() - t0:.0f} s)", flush=True)
    return out


def make_table(res_splits) -> tuple[str, str]:
    label = {"base": "base (all voices)", "base_ffp": "base: flite/Festival/pico part"}
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
    """WER per voice family, from the manifest's ``voice`` field (the corpus recipe writes it)."""
    from brogue.clients.eval import error_rates

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(voice_family(r.get("voice", "")), []).append(i)
    return {f: {"utterances": len(ix), "wer": error_rates([texts[i] for i in ix], [hyps[i] for i in ix])[0]}
            for f, ix in sorted(groups.items())}


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
    ffp = res_splits["base_ffp"]
    checks.append(f"base WER on the base test split {pct(b['base']['wer'])} (target < 15%): "
                  f"{'met' if b['base']['wer'] < 0.15 else 'NOT met'}")
    checks.append(f"base WER {pct(ffp['base']['wer'])} vs pocketsphinx {pct(ffp['pocketsphinx']['wer'])} on the "
                  f"flite/Festival/pico audio: {'met' if ffp['base']['wer'] < ffp['pocketsphinx']['wer'] else 'NOT met'}")
    return checks


def update_readme(readme: Path, block: str) -> None:
    """Replace the generated block inside the section; create the section before "## Docs" (or at
    the end) if missing."""
    text = readme.read_text()
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    elif "\n## Docs\n" in text:
        text = text.replace("\n## Docs\n", f"\n{SECTION}\n\n{INTRO}\n\n{block}\n\n## Docs\n", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}\n\n{block}\n"
    readme.write_text(text)


if __name__ == "__main__":
    main()
