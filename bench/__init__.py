"""Benchmarks, load and reliability scripts (``brogue bench``, ``brogue soak``, ``brogue faults``).

- :mod:`.stack`: the system under test, a tritonserver and a gateway on loopback, each restartable;
- :mod:`.clients`: one paced live stream over the WebSocket or the Riva gRPC API, timed;
- :mod:`.procstat`: CPU and RSS of the server processes;
- :mod:`.load`: N concurrent streams, percentiles, and the capacity search;
- :mod:`.compare`: the side-by-side throughput ratios;
- :mod:`.report`: JSON, markdown and PNG plots;
- :mod:`.faults`: the soak and the fault scripts;
- :mod:`.asr_streaming`: Triton's ``asr_streaming`` alone against the in-process runner.

None of this runs in CI: these machines are shared and noisy, so every number is measured side by
side in one run and reported as it came out.
"""
