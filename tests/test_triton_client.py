"""The gateway's Triton client: every stream to an instance rides one shared channel."""

from __future__ import annotations

import asyncio

import numpy as np

from brogue.server.triton_client import TritonPool


def test_streams_share_one_channel_per_instance_and_closing_a_stream_keeps_it(triton_server, demo_repo):
    """Sequences, the model check and the probes all use the pool's one client per URL; a stream's
    close ends its gRPC stream only, and the next stream still reaches Triton over the same channel."""
    from brogue.engine.metadata import ModelMeta

    url = triton_server.grpc_url
    fingerprint = ModelMeta.load(demo_repo.model_dir).fingerprint

    async def main():
        pool = TritonPool([url], fingerprint=fingerprint)
        await pool.check_models()
        channel = pool.client(url)
        chunk = np.zeros(16000, np.float32)
        for _ in range(3):  # one after another: each closes before the next opens
            seq = pool.open()
            assert seq._client is channel
            reply = await seq.send(chunk, end=True)
            assert reply.final and seq.closed
        a, b = pool.open(), pool.open()  # two at once
        assert a._client is b._client is channel
        await asyncio.gather(a.send(chunk, end=True), b.send(chunk, end=True))
        assert pool.live[url] == 0 and set(pool._clients) == {url}
        await pool.close()
        assert pool._clients == {}

    asyncio.run(main())


def test_errors_are_routed_by_their_code_and_a_broken_call_is_triton_going_away():
    """The model's refusals carry a code; an untagged error on a stream is either the transport
    breaking (a killed Triton: UNAVAILABLE, or INTERNAL "Internal error from Core") or a bug."""
    from tritonclient.utils import InferenceServerException

    from brogue.errors import ErrorCode, tagged
    from brogue.server.triton_client import SequenceError, TritonUnavailable

    async def main():
        pool = TritonPool(["127.0.0.1:1"])
        seq = pool.open()
        seq.started = True
        full = seq._classify(InferenceServerException(tagged(ErrorCode.CAPACITY, "stream capacity reached: ...")))
        assert isinstance(full, SequenceError) and full.code is ErrorCode.CAPACITY
        assert str(full) == "stream capacity reached: ..."
        assert pool.ready_urls() == ["127.0.0.1:1"]  # a refusal is not Triton going away
        lost = seq._classify(InferenceServerException(tagged(ErrorCode.NO_STATE, "sequence 1 has no state")))
        assert isinstance(lost, TritonUnavailable)  # a live stream whose state is gone: Triton restarted
        bug = seq._classify(InferenceServerException("unexpected inference input 'X'"))
        assert isinstance(bug, SequenceError) and bug.code is ErrorCode.INTERNAL
        down = seq._classify(InferenceServerException("Internal error from Core", status="StatusCode.INTERNAL"))
        assert isinstance(down, TritonUnavailable) and pool.ready_urls() == []
        # the same break, passed on by tritonclient's stream with no status (seen under load)
        pool2 = TritonPool(["127.0.0.1:2"])
        seq2 = pool2.open()
        down = seq2._classify(InferenceServerException("Internal error from Core"))
        assert isinstance(down, TritonUnavailable) and pool2.ready_urls() == []
        await pool.close()
        await pool2.close()

    asyncio.run(main())
