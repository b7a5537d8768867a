"""Parity of the exported graphs, driven by the streaming engine, with NeMo's own PyTorch inference.

For tiny models built from config (CTC, RNNT, hybrid serving either head; characters and a
SentencePiece tokenizer), each with two adapters, a batch that mixes slot 0 and both adapters in
several row orders is streamed through ``brogue export`` + :class:`StreamingRunner`. Every row must
give exactly NeMo's ``conformer_stream_step`` tokens and the offline tokens, with head outputs
(CTC log-probs, RNNT encoder output) within 1e-4.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from brogue.engine.runner import StreamingRunner
from brogue.export.adapter import adapters_from_model
from brogue.export.configs import build_model
from brogue.export.nemo_export import export_model
from brogue.export.nemo_model import ExportError
from nemo_reference import make_talkative, nemo_offline, nemo_streaming, random_adapters, use_adapter

pytestmark = pytest.mark.nemo

TINY = dict(d_model=64, n_layers=2, n_heads=2, att_context_size=[16, 7])
ADAPTERS = ["acc", "dom"]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
    "patients received furosemide and metformin twice a day", "a stitch in time saves nine",
    "how much wood would a woodchuck chuck", "streaming speech recognition for every tenant",
] * 20


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    (d / "text.txt").write_text("\n".join(SENTENCES))
    spm.SentencePieceTrainer.train(input=str(d / "text.txt"), model_prefix=str(d / "tokenizer"), vocab_size=48,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1)
    # NeMo's BPE models also register a vocab.txt artifact: the pieces, one per line.
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    (d / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    return d


def _audio(rng, seconds):
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def _build(head, serve, tokenizer_dir=None):
    torch.manual_seed(0)
    model = build_model(head, tokenizer_dir=tokenizer_dir, **TINY)
    random_adapters(model, ADAPTERS, dim=8)
    make_talkative(model)
    if head == "hybrid":
        model.change_decoding_strategy(decoder_type=serve)
    return model


CASES = [("ctc", "ctc", False), ("rnnt", "rnnt", True), ("hybrid", "ctc", False), ("hybrid", "rnnt", True),
         ("ctc", "ctc", True)]


@pytest.mark.parametrize("head,serve,bpe", CASES, ids=[f"{h}-{s}{'-bpe' if b else ''}" for h, s, b in CASES])
def test_streaming_parity_with_nemo(head, serve, bpe, spm_dir, tmp_path):
    model = _build(head, serve, spm_dir if bpe else None)
    meta = export_model(model, tmp_path / "m", head=serve, max_adapter_dim=16)
    assert meta["head"] == serve and meta["vocabulary"]["kind"] == ("sentencepiece" if bpe else "char")

    slot_names = {0: None, 1: "acc", 2: "dom"}

    rng = np.random.default_rng(7)
    audios = [_audio(rng, s) for s in (3.01, 2.27, 4.0, 1.33, 2.9, 0.41)]
    reference = {}  # (audio index, slot) -> (tokens, per-chunk outputs)
    for slot, name in slot_names.items():
        use_adapter(model, name)
        for i, a in enumerate(audios):
            toks, outs = nemo_streaming(model, a)
            assert toks == nemo_offline(model, a), f"NeMo streaming != offline for audio {i}, adapter {name}"
            reference[i, slot] = (toks, outs)
    # The adapters must matter, or this test proves nothing about the bank.
    for slot in (1, 2):
        assert any(reference[i, slot][0] != reference[i, 0][0] for i in range(len(audios)))
    assert sum(len(reference[i, 0][0]) for i in range(len(audios))) > 5

    # Every engine path against NeMo: ORT on host buffers, ORT bound by pointer to torch tensors (the
    # binding the CUDA and TensorRT providers use), and the TorchScript steps (the torch backend).
    for provider, memory in (("cpu", None), ("cpu", "torch-cpu"), ("torch-cpu", None)):
        runner = StreamingRunner(tmp_path / "m", slots=3, keep_outputs=True, provider=provider, memory=memory,
                                 max_batch=4)  # 6 streams: groups run in more than one batch
        for slot, (name, arrays) in enumerate(sorted(adapters_from_model(model).items()), start=1):
            runner.bank.write(slot, arrays["ln_weight"], arrays["ln_bias"], arrays["down"], arrays["up"])
        worst = 0.0
        for order in itertools.islice(itertools.permutations([0, 1, 2, 0, 1, 2]), 0, 720, 240):
            outputs = {i: [] for i in range(len(audios))}

            def collect(res):
                for k, o in res.items():
                    outputs[k] += o.outputs

            packet = int(rng.integers(800, 9000))
            states = runner.transcribe(audios, list(order), packet=packet, on_step=collect)
            for i, (st, slot) in enumerate(zip(states, order)):
                toks, ref_outs = reference[i, slot]
                assert st.tokens == toks, f"{provider}/{memory}: row {i} slot {slot} packet {packet}"
                assert len(outputs[i]) == len(ref_outs)
                for got, want in zip(outputs[i], ref_outs):
                    assert got.shape == want.shape
                    worst = max(worst, float(np.abs(got - want).max()))
        assert worst < 1e-4
        assert runner.stats.mixed_adapter_runs > 0
        assert runner.pool.free == runner.pool.rows  # every finished stream gave its row back
        print(f"{head}/{serve}{' bpe' if bpe else ''} {provider}/{memory}: max |engine - nemo| = {worst:.2e}")


def test_text_matches_nemo_tokenizer(spm_dir, tmp_path):
    """The engine's detokenizer gives the text NeMo's SentencePiece tokenizer gives."""
    model = _build("ctc", "ctc", spm_dir)
    export_model(model, tmp_path / "m", max_adapter_dim=8, verify=False)
    runner = StreamingRunner(tmp_path / "m")
    ids = [i for i in range(model.tokenizer.vocab_size)] * 2
    assert runner.detok.decode(ids) == model.tokenizer.ids_to_text(ids).strip()
    assert (tmp_path / "m" / "tokenizer.model").is_file()


def test_export_files_and_signature(tmp_path):
    model = _build("rnnt", "rnnt")
    meta = export_model(model, tmp_path / "m", max_adapter_dim=32)
    on_disk = json.loads((tmp_path / "m" / "model.json").read_text())
    assert on_disk == meta
    assert set(meta["files"]) == {"encoder.16_7.onnx", "encoder_first.16_7.onnx", "rnnt_decoder.onnx",
                                  "rnnt_joint.onnx", "weights.bin", "weights.json", "encoder.16_7.ts",
                                  "encoder_first.16_7.ts", "rnnt_decoder.ts", "rnnt_joint.ts"}
    import onnx

    g = onnx.load(str(tmp_path / "m" / "encoder.16_7.onnx")).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert inputs["adapter_ids"] == ["B"]
    assert inputs["adapter_down"] == ["S", 2, 32, 64] and inputs["adapter_up"] == ["S", 2, 64, 32]
    assert inputs["adapter_ln_weight"] == ["S", 2, 64]
    # The bank is a set of graph inputs, not initializers baked into the file.
    assert not {i.name for i in g.initializer} & set(inputs)
    assert meta["checks"]["encoder_max_abs_diff"] < 1e-4
    assert meta["checks"]["torch_step_max_abs_diff"] < 1e-4
    # The TorchScript twins hold no copy of the weights: they read weights.bin, as the ONNX graphs do.
    index = json.loads((tmp_path / "m" / "weights.json").read_text())
    assert set(index["torch"]) == {"encoder.16_7.ts", "encoder_first.16_7.ts", "rnnt_decoder.ts", "rnnt_joint.ts"}
    assert all((tmp_path / "m" / f).stat().st_size < meta["weights"]["bytes"] / 3 for f in index["torch"])
    assert meta["fingerprint"].startswith("sha256:")
    lat = meta["latencies"][0]
    assert lat["chunk_size"] == [57, 64] and lat["drop_extra_pre_encoded"] == 2


def test_multi_latency_model_exports_each_latency(tmp_path):
    torch.manual_seed(0)
    model = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[[16, 7], [16, 3], [16, 0]])
    make_talkative(model)
    meta = export_model(model, tmp_path / "m", max_adapter_dim=8)
    assert [l["name"] for l in meta["latencies"]] == ["16_7", "16_3", "16_0"]
    runner = StreamingRunner(tmp_path / "m")
    rng = np.random.default_rng(3)
    audio = _audio(rng, 2.5)
    for ctx in ([16, 7], [16, 3], [16, 0]):
        model.encoder.set_default_att_context_size(ctx)
        toks, _ = nemo_streaming(model, audio)
        (st,) = runner.transcribe([audio], latency=f"{ctx[0]}_{ctx[1]}")
        assert st.tokens == toks, ctx


def test_export_from_a_nemo_file_holds_each_weight_once(tmp_path):
    """From a .nemo on disk: every graph (each latency's first and steady step, ONNX and TorchScript)
    reads one shared weights.bin, so the export is about one copy of the weights however many graphs
    it writes. (How long an export takes is measured in docs/performance.md, not here.)"""
    model = _build("hybrid", "rnnt")
    model.save_to(str(tmp_path / "tiny.nemo"))
    params = 4 * sum(p.numel() for p in model.parameters())
    # what the CTC graphs compute with: the encoder (its adapters are bank inputs, not weights) and
    # the CTC head
    served = 4 * sum(p.numel() for n, p in model.named_parameters()
                     if n.startswith(("encoder.", "ctc_decoder.")) and "adapter" not in n)
    meta = export_model(tmp_path / "tiny.nemo", tmp_path / "m", head="ctc")
    assert meta["source"]["path"].endswith("tiny.nemo")
    out = tmp_path / "m"
    graphs = [f for f in out.iterdir() if f.suffix in (".onnx", ".ts")]
    weights = (out / "weights.bin").stat().st_size
    total = weights + sum(f.stat().st_size for f in graphs)
    print(f"{len(graphs)} graphs; parameters {params} B, of them served {served} B; weights.bin {weights} B, "
          f"all files {total} B")
    assert len(graphs) >= 4 and weights == meta["weights"]["bytes"]
    assert weights <= served  # each served tensor once (a copy per graph would be len(graphs) times)
    assert total < 2 * params, (total, params, len(graphs))


def test_refuses_what_it_cannot_stream(tmp_path):
    model = _build("ctc", "ctc")
    with pytest.raises(ExportError, match="cannot serve head 'rnnt'"):
        export_model(model, tmp_path / "a", head="rnnt")
    model.preprocessor.featurizer.normalize = "per_feature"
    with pytest.raises(ExportError, match="normalize='per_feature'"):
        export_model(model, tmp_path / "b")


def test_rnnt_emits_up_to_max_symbols_per_frame_like_nemo(tmp_path):
    """A transducer whose blank is unlikely hits the per-frame symbol limit; batched greedy decoding
    stops at ``max_symbols`` exactly where NeMo's streaming greedy decoding does."""
    from omegaconf import open_dict

    torch.manual_seed(0)
    model = build_model("rnnt", **TINY)
    make_talkative(model, rnnt_shift=6.0)  # blank rarely wins: frames want several symbols
    decoding = model.cfg.decoding
    with open_dict(decoding):
        decoding.greedy.max_symbols = 3
    model.change_decoding_strategy(decoding)
    meta = export_model(model, tmp_path / "m", max_adapter_dim=8)
    assert meta["decoding"]["rnnt"]["max_symbols"] == 3
    runner = StreamingRunner(tmp_path / "m")
    rng = np.random.default_rng(11)
    audios = [_audio(rng, s) for s in (2.3, 1.7, 3.1)]
    per_frame = []

    def collect(res):
        for o in res.values():
            per_frame.extend(np.unique(o.times, return_counts=True)[1].tolist())

    states = runner.transcribe(audios, packet=4000, on_step=collect)
    for a, st in zip(audios, states):
        assert st.tokens == nemo_streaming(model, a)[0]
    assert max(per_frame) == 3 and per_frame.count(3) > 5, "the limit must bind for this test to mean anything"
