"""The OpenAI-compatible batch transcription API on the gateway's HTTP port (docs/openai.md).

- :mod:`.api`: the routes (``POST /v1/audio/transcriptions``, ``GET /v1/models``): keys, models,
  the stream through :meth:`Gateway.run_stream`, Server-Sent Events;
- :mod:`.upload`: the multipart body, parsed as it arrives, the file spooled to disk, size limits;
- :mod:`.audio_file`: the spooled file decoded block by block into the model's audio;
- :mod:`.formats`: json, text, verbose_json, srt, vtt, and the text deltas of a stream;
- :mod:`.errors`: OpenAI's error shape over Brogue's error codes;
- :mod:`.http11`: one HTTP/1.1 exchange on a connection (h11), handed over by
  :mod:`brogue.server.http_front`, which shares the port with the WebSocket layer.
"""

from .api import OpenAIApi
from .http11 import HttpLimits
from .upload import UploadLimits

__all__ = ["HttpLimits", "OpenAIApi", "UploadLimits"]
