"""``model.json``: what an exported model tells the server, so that it can stream without NeMo.

Written by ``brogue export`` (:mod:`brogue.export.nemo_export`), read by the streaming engine, the
Triton model and the gateway. The reader checks the format tag and the fields it relies on, so a
model exported by a different Brogue version fails at load time with a clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from brogue.audio.mel import MelConfig

FORMAT = "brogue-model/1"

# The encoder graph's inputs and outputs (docs/export.md): the one place their names are spelled.
# The export writes graphs with them; the engine binds by them.
STREAM_INPUTS = ("audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len")
BANK_INPUTS = ("adapter_ids", "adapter_ln_weight", "adapter_ln_bias", "adapter_down", "adapter_up")
ENCODER_INPUTS = (*STREAM_INPUTS, *BANK_INPUTS)
STATE_OUTPUTS = ("encoded_lengths", "cache_last_channel_next", "cache_last_time_next", "cache_last_channel_next_len")


def head_output(head: str) -> str:
    """The encoder graph's first output: CTC log-probs (``ctc``) or the encoder output (``rnnt``)."""
    return "logprobs" if head == "ctc" else "encoded"


def encoder_outputs(head: str) -> tuple[str, ...]:
    """The encoder graph's outputs: the head's, the lengths, the next caches."""
    return (head_output(head), *STATE_OUTPUTS)


def bank_input_names() -> list[str]:
    """Names of the encoder graph inputs that carry the adapter bank (ids first)."""
    return list(BANK_INPUTS)


def read_tagged_json(path: Path, fmt: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in ``path``, whose ``format`` must be ``fmt``; a missing file raises
    FileNotFoundError, anything else wrong ``error``, each naming the file."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (export the model with `brogue export`)") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON: {e}") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise error(f"{path}: format {raw.get('format') if isinstance(raw, dict) else None!r}, expected {fmt!r}")
    return raw


def write_metadata(path: str | Path, meta: dict) -> None:
    Path(path).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")


@dataclass(frozen=True)
class Latency:
    """Streaming settings for one attention context (all frame counts are mel frames)."""

    name: str
    att_context_size: tuple[int, int]
    chunk_size: tuple[int, int]  # (first chunk, later chunks)
    shift_size: tuple[int, int]
    pre_encode_cache_size: tuple[int, int]
    drop_extra_pre_encoded: int
    valid_out_len: int
    sampling_frames: tuple[int, int]
    chunk_ms: int
    first_graph: str
    steady_graph: str

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        return cls(
            name=d["name"],
            att_context_size=tuple(d["att_context_size"]),
            chunk_size=tuple(d["chunk_size"]),
            shift_size=tuple(d["shift_size"]),
            pre_encode_cache_size=tuple(d["pre_encode_cache_size"]),
            drop_extra_pre_encoded=int(d["drop_extra_pre_encoded"]),
            valid_out_len=int(d["valid_out_len"]),
            sampling_frames=tuple(d["sampling_frames"]),
            chunk_ms=int(d["chunk_ms"]),
            first_graph=d["graphs"]["first"],
            steady_graph=d["graphs"]["steady"],
        )


@dataclass(frozen=True)
class ModelMeta:
    """A parsed ``model.json``; ``root`` is the folder holding the graphs."""

    root: Path
    raw: dict

    @classmethod
    def load(cls, model_dir: str | Path) -> "ModelMeta":
        root = Path(model_dir)
        raw = read_tagged_json(root / "model.json", FORMAT)
        for f in raw.get("files", []):
            if not (root / f).is_file():
                raise FileNotFoundError(f"{root / f}: listed in model.json but missing")
        return cls(root=root, raw=raw)

    @property
    def head(self) -> str:
        return self.raw["head"]

    @property
    def sample_rate(self) -> int:
        return int(self.raw["sample_rate"])

    @property
    def mel(self) -> MelConfig:
        return MelConfig.from_dict(self.raw["features"])

    @property
    def fingerprint(self) -> str:
        return self.raw["fingerprint"]

    @property
    def n_layers(self) -> int:
        return int(self.raw["encoder"]["n_layers"])

    @property
    def d_model(self) -> int:
        return int(self.raw["encoder"]["d_model"])

    @property
    def subsampling_factor(self) -> int:
        return int(self.raw["encoder"]["subsampling_factor"])

    @property
    def cache_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-stream cache shapes (no batch axis): last_channel [L, C, d], last_time [L, d, K]."""
        e = self.raw["encoder"]
        return tuple(e["cache_last_channel"]), tuple(e["cache_last_time"])

    @property
    def max_adapter_dim(self) -> int:
        return int(self.raw["adapters"]["max_dim"])

    @property
    def tokens(self) -> list[str]:
        return list(self.raw["vocabulary"]["tokens"])

    @property
    def vocab_kind(self) -> str:
        return self.raw["vocabulary"]["kind"]

    @property
    def blank_id(self) -> int:
        return int(self.raw["vocabulary"]["blank_id"])

    @property
    def weights_bytes(self) -> int:
        """Size of the shared ``weights.bin`` (0 for an export without one)."""
        return int(self.raw.get("weights", {}).get("bytes", 0))

    @property
    def rnnt(self) -> dict | None:
        return self.raw["decoding"].get("rnnt")

    @property
    def ctc_lm(self) -> dict | None:
        """The character LM for beam search (``decoding.ctc_lm``: file, order, alpha, beta, beam,
        ...), written by ``brogue lm``; None when the model has none."""
        return self.raw["decoding"].get("ctc_lm")

    @property
    def latencies(self) -> dict[str, Latency]:
        return {d["name"]: Latency.from_dict(d) for d in self.raw["latencies"]}

    @property
    def default_latency(self) -> str:
        return self.raw["default_latency"]

    def latency(self, name: str | None) -> Latency:
        lats = self.latencies
        if name in (None, ""):
            return lats[self.default_latency]
        if name not in lats:
            raise ValueError(f"unknown latency {name!r}; this model has {sorted(lats)}")
        return lats[name]

    def served_latencies(self, names=None) -> dict[str, Latency]:
        """The latencies named in ``names`` (a list, or a comma-separated string such as config.pbtxt's
        ``LATENCIES``), in that order; every latency of the model when ``names`` is empty."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        lats = self.latencies
        if not names:
            return lats
        unknown = [n for n in names if n not in lats]
        if unknown:
            raise ValueError(f"latencies {unknown} are not in this model; it has {list(lats)}")
        return {n: lats[n] for n in dict.fromkeys(names)}

    def served_latency(self, name: str | None, served: dict[str, Latency]) -> Latency:
        """Latency ``name`` out of ``served`` (from :meth:`served_latencies`); None or "" is the model's
        default, or the first served one when the default is not served. A ValueError that names the
        served ones for any other latency."""
        if not name:
            return served.get(self.default_latency) or next(iter(served.values()))
        lat = served.get(name)
        if lat is None:
            where = "is not served here" if name in self.latencies else "is not in this model"
            raise ValueError(f"latency {name!r} {where}; served latencies: {', '.join(served)}")
        return lat

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder output frame."""
        mel = self.mel
        return self.subsampling_factor * mel.hop_length / mel.sample_rate
