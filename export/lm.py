"""``brogue lm``: give an exported CTC model a character language model for beam search.

The sentences of one or more NeMo manifests (their ``text``) or plain text files become
``MODEL_DIR/lm.txt.gz``, and ``model.json`` gets ``decoding.ctc_lm`` (file, order and search
settings), which the engine reads (:mod:`brogue.engine.beam`). With ``dev``, the LM weight
``alpha`` and the character bonus ``beta`` are chosen on that manifest: its audio is streamed once
through the exported model, then every (alpha, beta) pair of the grid is decoded from the kept
log-probabilities and the lowest WER wins. The grid is coarse (alpha in steps of 0.25, beta of
0.5); with ``refine`` a finer one (steps of 0.05 and 0.25, two each way) is then searched around the
coarse grid's best, and the lowest WER over both wins. Tune on a split that is not the test split.

No torch, no NeMo: this runs where the server runs.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brogue.engine.beam import BeamConfig, BeamState, CTCBeamSearch
from brogue.engine.lm import CharNgramLM, read_text, write_text
from brogue.engine.metadata import ModelMeta, write_metadata

LM_FILE = "lm.txt.gz"
ALPHAS = (0.5, 0.75, 1.0, 1.25, 1.5)
BETAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5)
FINE_STEPS = (0.05, 0.25)  # alpha, beta: the refined grid around the coarse grid's best
FINE_REACH = 2  # steps each way


def fine_grid(alpha: float, beta: float, done, steps=FINE_STEPS, reach: int = FINE_REACH) -> list:
    """The (alpha, beta) pairs within ``reach`` steps of ``(alpha, beta)`` (``steps`` apart),
    with alpha above 0 and beta not below, less those in ``done``; rounded to 4 places so that
    0.75 + 0.05 is 0.8."""
    seen = {(round(a, 4), round(b, 4)) for a, b in done}
    out = []
    for i, j in itertools.product(range(-reach, reach + 1), repeat=2):
        pair = (round(alpha + i * steps[0], 4), round(beta + j * steps[1], 4))
        if pair[0] > 0 and pair[1] >= 0 and pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


@dataclass
class LMResult:
    sentences: int
    bytes: int
    order: int
    alpha: float
    beta: float
    dev_wer: float | None = None  # at the chosen (alpha, beta)
    dev_greedy_wer: float | None = None
    grid: list | None = None  # [(alpha, beta, wer)]


def sentences_from(paths, exclude: set[str] | None = None) -> list[str]:
    """Texts of NeMo manifests (``.json``: one object per line) and plain text files (one sentence
    per line, ``.txt`` or ``.txt.gz``), minus those in ``exclude``."""
    from brogue.clients.eval import read_manifest  # EvalError for a missing or malformed manifest

    out = []
    for p in paths:
        p = Path(p)
        if p.suffix == ".json":
            out += [r["text"] for r in read_manifest(p)]
        else:
            out += read_text(p)
    if exclude:
        out = [s for s in out if s not in exclude]
    return out


def _dev_outputs(model_dir: Path, manifest: Path, limit: int | None):
    """Stream the dev manifest once, greedily; keep each utterance's per-chunk log-probabilities
    (the beam search is then replayed on them chunk by chunk, committing as it does when served)."""
    from brogue.clients.eval import load_audio, read_manifest, transcribe
    from brogue.engine.runner import StreamingRunner

    runner = StreamingRunner(model_dir, decoder="greedy", keep_outputs=True)
    rows = read_manifest(manifest, limit)
    audios = [load_audio(r["audio_filepath"], runner.meta.mel.sample_rate) for r in rows]
    chunks: list[list[np.ndarray]] = []
    greedy = transcribe(runner, audios, 0, chunks=chunks)
    return runner, [r["text"] for r in rows], chunks, greedy


def decode_chunks(search: CTCBeamSearch, detok, chunks: list[list[np.ndarray]]) -> list[str]:
    """Beam-search each utterance's chunks in order, as the runner does for a stream."""
    out = []
    for parts in chunks:
        state, tokens = BeamState(), []
        for i, lp in enumerate(parts or [np.zeros((0, len(detok.tokens) + 1), np.float32)]):
            tokens += search.step(state, lp, final=i == max(len(parts), 1) - 1).tokens
        out.append(detok.decode(tokens))
    return out


def build_lm(model_dir: str | Path, text, *, order: int = 8, alpha: float = 1.0, beta: float = 1.5,
             beam: int = 16, dev: str | Path | None = None, dev_limit: int | None = 300,
             alphas=ALPHAS, betas=BETAS, refine: bool = True, progress=None) -> LMResult:
    """Write ``lm.txt.gz`` from ``text`` (paths, see :func:`sentences_from`) into ``model_dir`` and
    record it in model.json. With ``dev``, sentences of the dev manifest are left out of the LM and
    alpha/beta are tuned on it (``alpha``/``beta`` are then ignored): the dev WER of each pair is
    what ``brogue eval`` would report with it. ``refine`` searches :func:`fine_grid` around the best
    of ``alphas`` x ``betas`` too; ``res.grid`` holds every pair scored, the coarse ones first."""
    from brogue.clients.eval import error_rates
    from brogue.engine.vocab import Detokenizer

    model_dir = Path(model_dir)
    meta = ModelMeta.load(model_dir)
    if meta.head != "ctc":
        raise ValueError(f"{model_dir}: LM beam search is for CTC heads; this model's head is {meta.head}")
    surfaces = Detokenizer(meta.tokens, meta.vocab_kind).lm_surfaces()
    exclude = set(sentences_from([dev])) if dev else None
    sents = sentences_from(text, exclude)
    # As the runner will build it (the model's characters in the alphabet); validates the text
    # before anything is written.
    lm = CharNgramLM(sents, order, alphabet="".join(sorted(set("".join(surfaces)))))
    res = LMResult(sentences=lm.sentences, bytes=0, order=order, alpha=alpha, beta=beta)
    if dev:
        runner, refs, chunks, greedy = _dev_outputs(model_dir, Path(dev), dev_limit)
        res.dev_greedy_wer = error_rates(refs, greedy)[0]
        res.grid = []

        def score(pairs):
            for a, b in pairs:
                search = CTCBeamSearch(surfaces, runner.blank, lm, BeamConfig(alpha=a, beta=b, beam=beam))
                w = error_rates(refs, decode_chunks(search, runner.detok, chunks))[0]
                res.grid.append((a, b, w))
                if progress:
                    progress(a, b, w)

        score(itertools.product(alphas, betas))
        if refine:
            best = min(res.grid, key=lambda g: g[2])
            score(fine_grid(best[0], best[1], [(a, b) for a, b, _ in res.grid]))
        res.alpha, res.beta, res.dev_wer = min(res.grid, key=lambda g: g[2])
    n = write_text(model_dir / LM_FILE, sents)
    res.bytes = (model_dir / LM_FILE).stat().st_size
    raw = dict(meta.raw)
    raw["decoding"] = dict(raw["decoding"])
    raw["decoding"]["ctc_lm"] = {"file": LM_FILE, "kind": "char-ngram-kn", "order": order, "sentences": n,
                                 **asdict(BeamConfig(alpha=res.alpha, beta=res.beta, beam=beam))}
    files = [f for f in raw.get("files", []) if f != LM_FILE]
    raw["files"] = files + [LM_FILE]
    write_metadata(model_dir / "model.json", raw)
    return res


def remove_lm(model_dir: str | Path) -> bool:
    """Drop the model's LM (greedy decoding again). Returns whether it had one."""
    model_dir = Path(model_dir)
    meta = ModelMeta.load(model_dir)
    if meta.ctc_lm is None:
        return False
    raw = dict(meta.raw)
    raw["decoding"] = {k: v for k, v in raw["decoding"].items() if k != "ctc_lm"}
    raw["files"] = [f for f in raw.get("files", []) if f != LM_FILE]
    write_metadata(model_dir / "model.json", raw)
    (model_dir / LM_FILE).unlink(missing_ok=True)
    return True

