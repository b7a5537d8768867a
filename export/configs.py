"""NeMo model configs for small cache-aware streaming FastConformers, built from scratch.

No pretrained weights can be downloaded on the build hosts, so the demo model and the export tests
start from these configs. ``streaming_model_config`` gives the
full NeMo ``cfg`` for a CTC, RNNT or hybrid RNNT/CTC model, with a character vocabulary or a
SentencePiece tokenizer; :func:`build_model` instantiates the matching NeMo class.
"""

from __future__ import annotations

from pathlib import Path

CHAR_LABELS = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]

HEADS = ("ctc", "rnnt", "hybrid")


def _encoder(d_model: int, n_layers: int, att_context_size, n_heads: int, *, conv_channels: int | None = None,
             use_bias: bool = True) -> dict:
    return {
        "_target_": "nemo.collections.asr.modules.conformer_encoder.ConformerEncoderAdapter",
        "feat_in": 80,
        "feat_out": -1,
        "n_layers": n_layers,
        "d_model": d_model,
        "subsampling": "dw_striding",
        "subsampling_factor": 8,
        "subsampling_conv_channels": conv_channels or d_model,
        "causal_downsampling": True,
        "ff_expansion_factor": 4,
        "self_attention_model": "rel_pos",
        "n_heads": n_heads,
        "att_context_size": att_context_size,
        "att_context_style": "chunked_limited",
        "xscaling": True,
        "untie_biases": True,
        "pos_emb_max_len": 5000,
        "conv_kernel_size": 9,
        "conv_norm_type": "layer_norm",
        "conv_context_size": "causal",
        "dropout": 0.1,
        "dropout_pre_encoder": 0.1,
        "dropout_emb": 0.0,
        "dropout_att": 0.1,
        "use_bias": use_bias,
    }


def streaming_model_config(
    head: str = "ctc",
    *,
    tokenizer_dir: str | Path | None = None,
    d_model: int = 176,
    n_layers: int = 6,
    n_heads: int = 4,
    att_context_size=(72, 13),
    pred_hidden: int = 160,
    joint_hidden: int = 160,
    pred_rnn_layers: int = 1,
    subsampling_conv_channels: int | None = None,
    use_bias: bool = True,
) -> dict:
    """A NeMo model ``cfg`` (plain dict) for a cache-aware streaming FastConformer.

    ``head``: "ctc", "rnnt" or "hybrid" (RNNT with an auxiliary CTC head). ``tokenizer_dir``: a
    folder with a SentencePiece ``tokenizer.model`` (a BPE model class is used); ``None`` gives the
    28-character vocabulary. ``att_context_size`` is ``[left, right]`` or a list of such pairs for a
    multi-latency model (chunked_limited needs ``left % (right + 1) == 0``).
    ``subsampling_conv_channels`` (default ``d_model``), ``use_bias`` (biases in the conformer's
    linear and convolution layers) and ``pred_rnn_layers`` (LSTM layers of the RNNT prediction
    network) let the published architectures be expressed (``recipes/nvidia_shapes.py``).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    att = [list(a) for a in att_context_size] if isinstance(att_context_size[0], (list, tuple)) else list(
        att_context_size
    )
    cfg: dict = {
        "sample_rate": 16000,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "NA",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": 80,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1e-5,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": _encoder(d_model, n_layers, att, n_heads, conv_channels=subsampling_conv_channels,
                            use_bias=use_bias),
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "optim": None,
    }
    bpe = tokenizer_dir is not None
    if bpe:
        cfg["tokenizer"] = {"dir": str(tokenizer_dir), "type": "bpe"}
    labels = [] if bpe else list(CHAR_LABELS)
    ctc_decoder = {
        "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
        "feat_in": d_model,
        "num_classes": -1 if bpe else len(labels),
        "vocabulary": labels,
    }
    if head == "ctc":
        if not bpe:
            cfg["labels"] = labels
        cfg["decoder"] = ctc_decoder
        cfg["decoding"] = {"strategy": "greedy"}
        return cfg
    if not bpe:
        cfg["labels"] = labels
    cfg["model_defaults"] = {"enc_hidden": d_model, "pred_hidden": pred_hidden, "joint_hidden": joint_hidden}
    cfg["decoder"] = {
        "_target_": "nemo.collections.asr.modules.RNNTDecoder",
        "normalization_mode": None,
        "random_state_sampling": False,
        "blank_as_pad": True,
        "prednet": {"pred_hidden": pred_hidden, "pred_rnn_layers": pred_rnn_layers, "t_max": None, "dropout": 0.1},
    }
    cfg["joint"] = {
        "_target_": "nemo.collections.asr.modules.RNNTJoint",
        "log_softmax": None,
        "preserve_memory": False,
        "fuse_loss_wer": False,
        "jointnet": {"joint_hidden": joint_hidden, "activation": "relu", "dropout": 0.1},
    }
    cfg["decoding"] = {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}}
    cfg["loss"] = {"loss_name": "default"}
    if head == "hybrid":
        cfg["aux_ctc"] = {
            "ctc_loss_weight": 0.3,
            "use_cer": False,
            "decoder": ctc_decoder,
            "decoding": {"strategy": "greedy"},
        }
    return cfg


def model_class(head: str, bpe: bool):
    """The NeMo ``ModelPT`` class for a head and vocabulary kind."""
    from nemo.collections.asr import models as m

    return {
        ("ctc", False): m.EncDecCTCModel,
        ("ctc", True): m.EncDecCTCModelBPE,
        ("rnnt", False): m.EncDecRNNTModel,
        ("rnnt", True): m.EncDecRNNTBPEModel,
        ("hybrid", False): m.EncDecHybridRNNTCTCModel,
        ("hybrid", True): m.EncDecHybridRNNTCTCBPEModel,
    }[(head, bpe)]


def build_model(head: str = "ctc", *, tokenizer_dir: str | Path | None = None, **kw):
    """Instantiate a fresh (randomly initialised) NeMo model from :func:`streaming_model_config`."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(streaming_model_config(head, tokenizer_dir=tokenizer_dir, **kw))
    return model_class(head, tokenizer_dir is not None)(cfg=cfg, trainer=None)
