"""The committed demo model and its adapters (model_repo/): they load, validate, and do what the
docs/accuracy.md's table says on a few held-out clips (tests/data/demo, cut by recipes/test_clips.py
from the corpus recipe's test splits). Nothing here trains or synthesises speech.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from brogue.adapters import BaseSpec
from brogue.cli import app

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "model_repo" / "exported" / "demo"
STORE = REPO / "model_repo" / "adapters"
CLIPS = Path(__file__).resolve().parent / "data" / "demo"
ADAPTERS = ["scottish", "caribbean", "indian", "german", "medical"]
LAST_LINE = re.compile(r"^WER=\d+\.\d\d CER=\d+\.\d\d$")


def _clips() -> list[dict]:
    rows = [json.loads(l) for l in open(CLIPS / "manifest.json")]
    assert rows, "tests/data/demo/manifest.json is empty"
    return rows


def test_committed_demo_model_and_adapters_load_and_validate():
    from brogue.engine.metadata import ModelMeta
    from brogue.adapters.store import AdapterStore

    meta = ModelMeta.load(MODEL_DIR)
    base = BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model, meta.max_adapter_dim)
    store = AdapterStore(STORE)
    for name in ADAPTERS:
        assert store.versions(name) == ["v1"], name
        w = store.load(f"{name}@v1", base)
        assert w.manifest.kind == ("domain" if name == "medical" else "accent")
    assert (REPO / "model_repo" / "demo.nemo").is_file(), "the source .nemo of the export is committed"


def test_committed_binaries_stay_small():
    files = [p for d in ("exported", "adapters") for p in (REPO / "model_repo" / d).rglob("*") if p.is_file()]
    files += [REPO / "model_repo" / "demo.nemo", *CLIPS.rglob("*")]
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total < 60 * 2**20, f"{total / 2**20:.1f} MB of model artifacts"


def test_each_adapter_transcribes_its_own_clip_better_than_the_base():
    """On a clip of its own held-out split, each adapter's character error rate is below the base
    model's, streamed through the ONNX engine."""
    from brogue.clients.eval import error_rates, load_audio, make_runner, transcribe

    rows = _clips()
    for name in ADAPTERS:
        mine = [r for r in rows if r["set"] == name]
        assert mine, f"no clip for {name} in tests/data/demo"
        runner, ref = make_runner(MODEL_DIR, f"{name}@v1", STORE)
        audios = [load_audio(str(CLIPS / r["audio_filepath"]), 16000) for r in mine]
        texts = [r["text"] for r in mine]
        _, cer_base = error_rates(texts, transcribe(runner, audios, 0))
        _, cer_adapted = error_rates(texts, transcribe(runner, audios, 1))
        assert cer_adapted < cer_base, f"{ref}: CER {cer_adapted:.3f} with the adapter, {cer_base:.3f} without"


def test_base_clip_is_transcribed_well_by_the_base_model():
    from brogue.clients.eval import error_rates, load_audio, make_runner, transcribe

    mine = [r for r in _clips() if r["set"] == "base"]
    assert mine
    runner, _ = make_runner(MODEL_DIR, None, STORE)
    hyps = transcribe(runner, [load_audio(str(CLIPS / r["audio_filepath"]), 16000) for r in mine], 0)
    _, cer = error_rates([r["text"] for r in mine], hyps)
    assert cer < 0.15, (hyps, cer)


def test_brogue_eval_on_the_demo_clips_ends_with_the_score_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative audio paths are read from the manifest's folder, not the cwd
    res = CliRunner().invoke(app, ["eval", str(CLIPS / "manifest.json"), "--model-dir", str(MODEL_DIR),
                                   "--store", str(STORE), "--adapter", "medical@v1"])
    assert res.exit_code == 0, res.output
    assert LAST_LINE.match(res.output.strip().splitlines()[-1]), res.output
    assert "adapter medical@v1" in res.output


def test_the_demo_model_decodes_with_its_lm_and_the_lm_helps():
    """As served, the demo model decodes by beam search with its character LM; on the held-out clips,
    each with its own set's adapter (the base clip without one), that gives fewer word errors than
    greedy decoding of the same encoder output."""
    from brogue.clients.eval import error_rates, load_audio, make_runner, transcribe

    texts, hyps = [], {"lm": [], "greedy": []}
    for r in _clips():
        adapter = None if r["set"] == "base" else f"{r['set']}@v1"
        audio = load_audio(str(CLIPS / r["audio_filepath"]), 16000)
        texts.append(r["text"])
        for decoder in hyps:
            runner, _ = make_runner(MODEL_DIR, adapter, STORE, decoder=decoder)
            assert runner.decoder == decoder
            hyps[decoder] += transcribe(runner, [audio], 1 if adapter else 0)
    wer_lm, _ = error_rates(texts, hyps["lm"])
    wer_greedy, _ = error_rates(texts, hyps["greedy"])
    assert wer_lm < wer_greedy, (wer_lm, wer_greedy, hyps)


def test_only_the_domain_adapter_carries_a_domain_lm():
    from brogue.engine.metadata import ModelMeta
    from brogue.adapters.store import AdapterStore

    meta = ModelMeta.load(MODEL_DIR)
    base = BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model, meta.max_adapter_dim)
    store = AdapterStore(STORE)
    for name in ADAPTERS:
        w = store.load(f"{name}@v1", base)
        assert (w.lm_path is not None) == (name == "medical"), name
    assert store.load("medical@v1", base).manifest.lm["sentences"] == 900  # medical_adapt.json's sentences


def test_the_committed_model_repository_serves_the_demo_with_its_lms_in_tritonserver():
    """A real tritonserver on model_repo/ exactly as committed (LM decoding by default): the base
    clip on the base model and the medical clip on medical@v1 (with its domain LM) give the
    in-process runner's tokens, and decode with the LM (not greedily)."""
    from brogue.clients.eval import load_audio, make_runner
    from brogue.clients.triton_sequence import TritonSequence
    from brogue.server.tritonserver import TritonProcess

    rows = {r["set"]: r for r in _clips()}
    cases = [("base", ""), ("medical", "medical@v1")]
    audios = {s: load_audio(str(CLIPS / rows[s]["audio_filepath"]), 16000) for s, _ in cases}
    server = TritonProcess(REPO / "model_repo", models=("asr_streaming",))
    server.start(timeout=240)
    try:
        served = {}
        for i, (s, adapter) in enumerate(cases):
            tokens = []
            with TritonSequence(server.grpc_url, 7000 + i, adapter=adapter) as seq:
                a = audios[s]
                for pos in range(0, len(a), 4000):
                    tokens += seq.send(a[pos:pos + 4000], end=pos + 4000 >= len(a)).tokens
            served[s] = tokens
    finally:
        server.stop()
    differs = []
    for s, adapter in cases:
        runner, _ = make_runner(MODEL_DIR, adapter or None, STORE)
        greedy, _ = make_runner(MODEL_DIR, adapter or None, STORE, decoder="greedy")
        slot = 1 if adapter else 0
        (st,) = runner.transcribe([audios[s]], [slot])
        (gst,) = greedy.transcribe([audios[s]], [slot])
        assert list(served[s]) == st.tokens, s
        differs.append(st.tokens != gst.tokens)
    assert any(differs), "LM decoding gave the greedy transcripts: is the server decoding with the LM?"


def test_the_committed_adapters_stream_as_in_nemo():
    """The committed demo.nemo with each committed adapter-store entry loaded back into a NeMo
    LinearAdapter (recipes/check_streaming.py) streams its set's clip to the same tokens as the
    exported model with the entry in its bank: the store entries are NeMo's adapters, exactly."""
    import sys

    from brogue.clients.eval import load_audio, make_runner
    from brogue.export.nemo_model import load_nemo
    from nemo_reference import nemo_streaming

    sys.path.insert(0, str(REPO))
    from recipes.check_streaming import load_entry_into_nemo

    rows = {r["set"]: r for r in _clips()}
    model = load_nemo(REPO / "model_repo" / "demo.nemo")  # each entry is added once, then enabled alone
    changed = 0
    for name in ADAPTERS:
        audio = load_audio(str(CLIPS / rows[name]["audio_filepath"]), 16000)
        runner, ref = make_runner(MODEL_DIR, f"{name}@v1", STORE, decoder="greedy")
        (base_st, st) = runner.transcribe([audio, audio], [0, 1])
        load_entry_into_nemo(model, STORE, ref)
        tokens, _ = nemo_streaming(model, audio)
        assert st.tokens == tokens, name
        changed += st.tokens != base_st.tokens
    assert changed == len(ADAPTERS), "an adapter left its clip's tokens as the base model's"


def test_bench_models_compares_two_model_dirs_side_by_side(capsys):
    """bench/models.py on the committed model against itself: the same transcripts give the same
    WER, every round is timed, and the ratio is of the two best times."""
    from bench.models import main

    out = main([str(MODEL_DIR), str(MODEL_DIR), "--manifest", str(CLIPS / "manifest.json"), "--rounds", "2"])
    first, second = out["models"]
    assert first["wer"] == second["wer"] and 0 <= first["wer"] < 1
    assert len(first["all_seconds"]) == len(second["all_seconds"]) == 2
    assert first["seconds"] == min(first["all_seconds"]) > 0
    assert out["second_over_first_time"] == second["seconds"] / first["seconds"]
    assert first["n_layers"] >= 1 and first["d_model"] >= 1
    assert "second / first wall time" in capsys.readouterr().out
