"""pocketsphinx (the PyPI wheel's bundled en-us model) on any NeMo manifest, scored as ``brogue
eval`` scores: the peer column for a manifest outside the corpus, such as the real speech of
recipes/real_speech.py.

    python recipes/peer_eval.py MANIFEST.json      # last line: WER=.. CER=..  (needs .[recipes])
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brogue.clients.eval import error_rates, read_manifest  # noqa: E402
from recipes.report import pocketsphinx_hyps  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    a = ap.parse_args(argv)
    rows = read_manifest(a.manifest)
    t0 = time.time()
    hyps = pocketsphinx_hyps(rows, None)
    wer, cer = error_rates([r["text"] for r in rows], hyps)
    print(f"{len(rows)} utterances, pocketsphinx {time.time() - t0:.0f} s")
    print(f"WER={wer * 100:.2f} CER={cer * 100:.2f}")


if __name__ == "__main__":
    main()
