"""NeMo's own PyTorch inference, as the reference the exported graphs must reproduce.

``nemo_streaming`` is the loop of NeMo's ``speech_to_text_cache_aware_streaming_infer.py``: NeMo's
``CacheAwareStreamingAudioBuffer`` cuts the utterance's valid log-mel frames and
``conformer_stream_step`` decodes each chunk greedily. ``nemo_offline`` runs the whole utterance through the model at once.
"""

from __future__ import annotations

import numpy as np
import torch


def random_adapters(model, names, dim: int, seed: int = 0):
    """Add LinearAdapters ``encoder:NAME`` with random (non-identity) weights, all disabled."""
    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

    g = torch.Generator().manual_seed(seed)
    d = int(model.encoder.d_model)
    for name in names:
        model.add_adapter(name=f"encoder:{name}", cfg=LinearAdapterConfig(in_features=d, dim=dim))
    with torch.no_grad():
        for k, p in model.named_parameters():
            if ".adapter_layer." in k:
                if k.endswith("module.0.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                elif k.endswith("module.0.bias"):
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model.set_enabled_adapters(enabled=False)
    model.eval()


def make_talkative(model, ctc_shift: float = 8.0, rnnt_shift: float = 0.0) -> None:
    """Lower the blank logit of a randomly initialised model so that greedy decoding emits tokens."""
    with torch.no_grad():
        if hasattr(model, "ctc_decoder") or not hasattr(model, "joint"):
            dec = model.ctc_decoder if hasattr(model, "ctc_decoder") else model.decoder
            dec.decoder_layers[0].bias[-1] -= ctc_shift
        if hasattr(model, "joint"):  # a random joint's bias swamps its input: drop it, sharpen the rest
            model.joint.joint_net[-1].weight *= 5.0
            model.joint.joint_net[-1].bias.zero_()
            model.joint.joint_net[-1].bias[-1] -= rnnt_shift


def use_adapter(model, name: str | None) -> None:
    """Enable exactly one adapter (None: the base model)."""
    if model.get_enabled_adapters():
        model.set_enabled_adapters(enabled=False)
    if name is not None:
        model.set_enabled_adapters(name=f"encoder:{name}", enabled=True)


def _ctc_collapse(frames, blank: int) -> list[int]:
    out, prev = [], -1
    for k in frames:
        k = int(k)
        if k != blank and k != prev:
            out.append(k)
        prev = k
    return out


def _serves_ctc(model) -> bool:
    from nemo.collections.asr.models import EncDecHybridRNNTCTCModel, EncDecCTCModel

    return isinstance(model, EncDecCTCModel) or (
        isinstance(model, EncDecHybridRNNTCTCModel) and model.cur_decoder == "ctc")


@torch.no_grad()
def nemo_streaming(model, audio: np.ndarray):
    """Tokens and per-chunk head outputs (CTC log-probs or RNNT encoder output, [T, *]) of one
    utterance, streamed through NeMo's ``conformer_stream_step``."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    enc = model.encoder
    enc.setup_streaming_params()
    buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False)
    # append_audio would also feed the STFT frame past len // hop that the preprocessor masks (it
    # changes the whole last chunk); give the buffer only the valid frames, as offline decoding sees.
    feats, flen = buf.preprocess_audio(audio)
    buf.append_processed_signal(feats[:, :, : int(flen[0])], stream_id=-1)
    ch, tm, ln = enc.get_initial_cache_state(batch_size=1)
    ctc = _serves_ctc(model)
    blank = (model.ctc_decoder if hasattr(model, "ctc_decoder") else model.decoder).num_classes_with_blank - 1 \
        if ctc else model.decoder.blank_idx
    prev_hyp, pred_out, outputs = None, None, []
    for step, (chunk, chunk_len) in enumerate(iter(buf)):
        drop = 0 if step == 0 else enc.streaming_cfg.drop_extra_pre_encoded
        keep_all = buf.is_buffer_empty()
        if not ctc:  # the encoder output, for comparing with the exported graph
            enc_out, enc_len, *_ = enc.cache_aware_stream_step(
                processed_signal=chunk, processed_signal_length=chunk_len, cache_last_channel=ch,
                cache_last_time=tm, cache_last_channel_len=ln, keep_all_outputs=keep_all,
                drop_extra_pre_encoded=drop)
            outputs.append(enc_out[0, :, : int(enc_len[0])].T.numpy())
        res = model.conformer_stream_step(
            processed_signal=chunk, processed_signal_length=chunk_len, cache_last_channel=ch,
            cache_last_time=tm, cache_last_channel_len=ln, keep_all_outputs=keep_all,
            previous_hypotheses=prev_hyp, previous_pred_out=pred_out, drop_extra_pre_encoded=drop,
            return_transcription=True, return_log_probs=ctc)
        pred_out, _, ch, tm, ln, prev_hyp = res[:6]
        if ctc:
            logp = res[6][0].numpy()
            n = logp.shape[0] if keep_all else min(logp.shape[0], enc.streaming_cfg.valid_out_len)
            outputs.append(logp[:n])
    if ctc:
        tokens = _ctc_collapse(pred_out[0].tolist(), blank)
    else:
        tokens = [int(t) for t in prev_hyp[0].y_sequence]
    return tokens, outputs


@torch.no_grad()
def nemo_offline(model, audio: np.ndarray) -> list[int]:
    """Greedy tokens of the whole utterance through the model at once."""
    x = torch.from_numpy(audio)[None]
    feats, flen = model.preprocessor(input_signal=x, length=torch.tensor([len(audio)]))
    enc, elen = model.encoder(audio_signal=feats, length=flen)
    if _serves_ctc(model):
        dec = model.ctc_decoder if hasattr(model, "ctc_decoder") else model.decoder
        logp = dec(encoder_output=enc)
        return _ctc_collapse(logp[0, : int(elen[0])].argmax(-1).tolist(), dec.num_classes_with_blank - 1)
    hyp = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=elen,
                                                         return_hypotheses=True)
    return [int(t) for t in hyp[0].y_sequence]
