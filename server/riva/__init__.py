"""Riva-compatible gRPC front end (``nvidia.riva.asr.RivaSpeechRecognition``); see docs/riva.md."""

from .asr_service import RivaSpeechRecognitionServicer, add_riva_asr

__all__ = ["RivaSpeechRecognitionServicer", "add_riva_asr"]
