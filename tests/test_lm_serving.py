"""LM beam search in the serving path: ``brogue lm`` on an exported model, the runner's decoder
choice, and adapters' domain LMs reaching the streams that use them (runner, StreamingModel).

What is checked here is the plumbing and the streaming invariants, on the demo model with LMs of
a few sentences, not accuracy (tests/test_demo_model.py checks accuracy).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from brogue.cli import app
from brogue.engine.lm import MixedLM
from brogue.engine.runner import StreamingRunner
from conftest import demo_speech

TEXT = ["the cat sat on the mat", "a dog and a cat", "put the log on the fire", "it's a red mat"] * 5
DOMAIN = ["give warfarin daily", "stop the metformin", "warfarin and heparin"] * 3


@pytest.fixture
def lm_model(demo_repo, tmp_path):
    """A copy of the demo model with its character LM replaced by one `brogue lm` builds."""
    model_dir = tmp_path / "m"
    shutil.copytree(demo_repo.model_dir, model_dir)
    (tmp_path / "text.txt").write_text("\n".join(TEXT) + "\n")
    manifest = tmp_path / "text.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": "x.wav", "duration": 1.0, "text": t}) + "\n"
                                for t in DOMAIN))
    r = CliRunner().invoke(app, ["lm", str(tmp_path / "text.txt"), str(manifest), "--model-dir", str(model_dir),
                                 "--order", "5", "--alpha", "0.8", "--beta", "1.0"])
    assert r.exit_code == 0, r.output
    return model_dir


def test_brogue_lm_records_the_lm_in_model_json(lm_model):
    meta = json.loads((lm_model / "model.json").read_text())
    spec = meta["decoding"]["ctc_lm"]
    assert spec["file"] == "lm.txt.gz" and "lm.txt.gz" in meta["files"]
    assert (spec["order"], spec["alpha"], spec["beta"], spec["sentences"]) == (5, 0.8, 1.0, len(TEXT) + len(DOMAIN))
    assert StreamingRunner(lm_model).decoder == "lm"
    assert StreamingRunner(lm_model, decoder="greedy").decoder == "greedy"


def test_lm_decoding_does_not_depend_on_packet_size(lm_model):
    """Commits happen per encoder chunk, and chunks do not depend on how audio arrives."""
    rng = np.random.default_rng(0)
    audios = [demo_speech(rng, s) for s in (2.3, 4.1, 0.7)]
    runner = StreamingRunner(lm_model, slots=1)
    ref = [runner.detok.decode(s.tokens) for s in runner.transcribe(audios, packet=16000)]
    for packet in (160, 2731):
        got = [runner.detok.decode(s.tokens) for s in runner.transcribe(audios, packet=packet)]
        assert got == ref
    assert all(ref), "the demo model should say something"


def test_token_times_rise_and_every_token_is_reported_once(lm_model):
    rng = np.random.default_rng(1)
    audio = demo_speech(rng, 5.0)
    runner = StreamingRunner(lm_model, slots=1)
    seen_tokens, seen_times = [], []

    def on_step(res):
        for o in res.values():
            seen_tokens.extend(o.tokens)
            seen_times.extend(o.times)

    (st,) = runner.transcribe([audio], packet=3200, on_step=on_step)
    assert seen_tokens == st.tokens and seen_times == sorted(seen_times)
    assert len(seen_times) == len(seen_tokens) and all(0 <= t <= 5.5 for t in seen_times)


def test_remove_returns_the_model_to_greedy(lm_model):
    r = CliRunner().invoke(app, ["lm", "unused.txt", "--model-dir", str(lm_model), "--remove"])
    assert r.exit_code == 0, r.output
    assert not (lm_model / "lm.txt.gz").exists()
    assert "ctc_lm" not in json.loads((lm_model / "model.json").read_text())["decoding"]
    assert StreamingRunner(lm_model).decoder == "greedy"
    with pytest.raises(ValueError, match="no language model"):
        StreamingRunner(lm_model, decoder="lm")


def test_bad_lm_input_fails_clearly(lm_model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = CliRunner().invoke(app, ["lm", str(empty), "--model-dir", str(lm_model)])
    assert r.exit_code != 0 and "no text" in r.output
    with pytest.raises(ValueError, match="unknown decoder"):
        StreamingRunner(lm_model, decoder="beam")
    (lm_model / "lm.txt.gz").write_bytes(b"\x1f\x8b\x08 broken")
    with pytest.raises(ValueError, match="unreadable language model"):
        StreamingRunner(lm_model)
    (lm_model / "lm.txt.gz").unlink()
    with pytest.raises(FileNotFoundError, match="lm.txt.gz"):
        StreamingRunner(lm_model)


def _publish(store_dir, demo_repo, name, lm: bool):
    from brogue.adapters import publish_adapter

    return publish_adapter(store_dir, next(iter(demo_repo.arrays.values())), name=name, version="v1",
                           base_fingerprint=demo_repo.fingerprint,
                           lm_sentences=DOMAIN if lm else None, lm_order=4, lm_weight=0.6)


def test_an_adapters_domain_lm_reaches_its_slot_in_the_streaming_model(lm_model, demo_repo, tmp_path):
    """StreamingModel: a stream on a domain adapter decodes with the model's LM mixed with the
    adapter's; when that slot goes to an adapter without an LM, the mixture goes with it."""
    from brogue.server.streaming_model import ChunkRequest, StreamingModel

    store = tmp_path / "store"
    _publish(store, demo_repo, "med", lm=True)
    _publish(store, demo_repo, "plain", lm=False)
    model = StreamingModel(lm_model, store, slots=2)  # one adapter slot: each load evicts the last
    try:
        audio = demo_speech(np.random.default_rng(2), 2.0)
        res = model.execute([ChunkRequest(corrid=1, start=True, end=True, audio=audio, adapter="med@v1")])[0]
        assert res.error is None
        runner = model.runner
        (lm, weight), = runner._slot_lms.values()
        assert weight == 0.6 and "w" in lm.alphabet and lm.order == 4
        # The served tokens equal an in-process runner given the same adapter and domain LM by hand.
        from brogue.engine.lm import load_lm
        arrays = next(iter(demo_repo.arrays.values()))
        ref = StreamingRunner(lm_model, slots=2)
        ref.bank.write(1, arrays["ln_weight"], arrays["ln_bias"], arrays["down"], arrays["up"])
        ref.set_slot_lm(1, load_lm(store / "med" / "v1" / "lm.txt.gz", 4, alphabet=ref.lm_alphabet), 0.6)
        (st,) = ref.transcribe([audio], [1])
        assert list(res.tokens) == st.tokens
        res2 = model.execute([ChunkRequest(corrid=2, start=True, end=True, audio=audio, adapter="plain@v1")])[0]
        assert res2.error is None and runner._slot_lms == {}
    finally:
        model.close()


def test_eval_uses_the_adapters_domain_lm(lm_model, demo_repo, tmp_path):
    from brogue.clients.eval import make_runner

    store = tmp_path / "store"
    _publish(store, demo_repo, "med", lm=True)
    runner, ref = make_runner(lm_model, "med", store)
    assert ref == "med@v1" and set(runner._slot_lms) == {1}
    mixed = runner._searcher(1).lm  # the model's LM and the adapter's, weighted by the recent text
    assert isinstance(mixed, MixedLM) and mixed.window == runner.beam_config.domain_window > 0
    assert [w for _, w in mixed.parts] == pytest.approx([0.4, 0.6]) and runner._searcher(0).lm is runner.lm
    greedy, _ = make_runner(lm_model, "med", store, decoder="greedy")
    assert greedy.decoder == "greedy" and greedy._slot_lms == {}


def _dev_setup(demo_repo, tmp_path, utterances: int, seed: int):
    """A copy of the demo model, a dev manifest of ``utterances`` speech clips labelled with TEXT,
    and ``tmp_path/text.txt`` (TEXT + DOMAIN) for the LM; returns (model_dir, dev manifest)."""
    import soundfile as sf

    model_dir = tmp_path / "m"
    shutil.copytree(demo_repo.model_dir, model_dir)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(utterances):
        sf.write(tmp_path / f"{i}.wav", demo_speech(rng, 1.5 + i / 2), 16000)
        rows.append({"audio_filepath": f"{i}.wav", "duration": 1.5 + i / 2, "text": TEXT[i]})
    dev = tmp_path / "dev.json"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "text.txt").write_text("\n".join(TEXT + DOMAIN) + "\n")
    return model_dir, dev


def test_dev_tuning_picks_the_grid_point_that_eval_then_reports(demo_repo, tmp_path):
    """`brogue lm --dev`: each (alpha, beta) is scored by replaying the beam search over the dev
    streams' chunks, committing as served; the chosen pair's dev WER is what `brogue eval` gives."""
    from brogue.clients.eval import evaluate
    from brogue.export.lm import build_lm

    model_dir, dev = _dev_setup(demo_repo, tmp_path, utterances=4, seed=5)
    res = build_lm(model_dir, [tmp_path / "text.txt"], order=4, dev=dev, alphas=(0.2, 0.6), betas=(1.0, 3.0),
                   refine=False)
    assert res.sentences == len(DOMAIN)  # the dev sentences are left out of the LM
    assert len(res.grid) == 4 and (res.alpha, res.beta, res.dev_wer) == min(res.grid, key=lambda g: g[2])
    spec = json.loads((model_dir / "model.json").read_text())["decoding"]["ctc_lm"]
    assert (spec["alpha"], spec["beta"]) == (res.alpha, res.beta) and spec["max_delay"] == 12
    assert evaluate(dev, model_dir=model_dir, decoder="lm").wer == pytest.approx(res.dev_wer)


def test_fine_grid_surrounds_the_coarse_best_without_repeating_a_scored_pair():
    from brogue.export.lm import fine_grid

    pairs = fine_grid(0.75, 2.0, done=[(0.75, 2.0), (0.75, 1.5)])
    assert len(pairs) == 25 - 2  # 5 x 5 around the best, less the two pairs already scored
    assert {a for a, _ in pairs} == {0.65, 0.7, 0.75, 0.8, 0.85}  # rounded: 0.75 + 0.05 is 0.8
    assert {b for _, b in pairs} == {1.5, 1.75, 2.0, 2.25, 2.5} and (0.75, 1.5) not in pairs
    assert all(a > 0 and b >= 0 for a, b in fine_grid(0.05, 0.25, done=[]))  # nothing below the axes
    assert len(fine_grid(0.05, 0.25, done=[])) == 3 * 4  # alphas 0.05-0.15 and betas 0-0.75
    assert len(set(pairs)) == len(pairs)


def test_dev_tuning_refines_around_the_coarse_best(demo_repo, tmp_path):
    """With refine (the default), the pairs scored after the coarse grid are the fine grid around
    its best, and the pick is the lowest dev WER over both grids."""
    from brogue.export.lm import build_lm, fine_grid

    model_dir, dev = _dev_setup(demo_repo, tmp_path, utterances=3, seed=6)
    res = build_lm(model_dir, [tmp_path / "text.txt"], order=4, dev=dev, alphas=(0.5, 1.0), betas=(1.0,))
    coarse, fine = res.grid[:2], res.grid[2:]
    best = min(coarse, key=lambda g: g[2])
    assert [(a, b) for a, b, _ in fine] == fine_grid(best[0], best[1], [(a, b) for a, b, _ in coarse])
    assert (res.alpha, res.beta, res.dev_wer) == min(res.grid, key=lambda g: g[2])
    spec = json.loads((model_dir / "model.json").read_text())["decoding"]["ctc_lm"]
    assert (spec["alpha"], spec["beta"]) == (res.alpha, res.beta)
