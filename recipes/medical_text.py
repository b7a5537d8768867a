"""Medical sentences that are not one template: wordnet's own medical text, and clinical frames in groups.

Two sources, each cut into groups that a split holds out whole (``recipes/corpus_heldout.py``):

* **gloss**: every noun synset under wordnet's medical roots (:data:`MED_ROOTS`: drugs and medicines,
  ill health, symptoms, medical procedures and care, injuries) or in its medicine topic domain,
  spoken as ``"<name> is <definition>"`` (``"furosemide is a diuretic drug trade name lasix used in the
  treatment of hypertension and edema"``) and its quoted examples. The group is the synset: a
  held-out synset's names, definition and examples never reach training.
* **frame**: clinical sentences of seven kinds (:data:`FRAME_GROUPS`: orders, history, findings,
  procedures, letters, patient talk, ward handover), filled with drug, condition and procedure names
  from Debian's ``hunspell-en-med`` dictionary, doses, times and days. The group is the kind: a
  held-out kind's frames never reach training. The corpus's first medical set (fifteen templates,
  ``recipes/corpus.py``) is one more kind, for training only.

Text is normalised to the model's vocabulary as the corpus does (:func:`recipes.corpus.normalise`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from recipes.corpus import medical_terms, normalise

WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
# Roots of wordnet's medical hyponym trees (noun synset offsets in Debian's wordnet-base 3.0), and the
# topic synset "medicine, medical_specialty" whose domain members are added.
MED_ROOTS = {"drug": "03247620", "medicine": "03740161", "ill_health": "14052046", "symptom": "14299637",
             "medical_procedure": "01024392", "medical_care": "00657604", "injury": "14285662",
             "pathological_state": "14051917"}
MEDICINE_DOMAIN = "06043075"
MIN_CHARS, MAX_CHARS = 25, 140


@dataclass(frozen=True)
class Synset:
    offset: str
    names: tuple[str, ...]
    definitions: tuple[str, ...]
    examples: tuple[str, ...]


def _parse_nouns(path: str = WORDNET_NOUNS) -> dict[str, tuple[list[str], list[tuple[str, str, str]], str]]:
    """``{offset: (words, pointers (symbol, target, pos), gloss)}`` of every noun synset."""
    out = {}
    for line in open(path, encoding="latin-1"):
        if line.startswith("  ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        f = head.split()
        n_words = int(f[3], 16)
        words = [f[4 + 2 * i] for i in range(n_words)]
        p = 4 + 2 * n_words
        ptrs = [(f[p + 1 + 4 * i], f[p + 2 + 4 * i], f[p + 3 + 4 * i]) for i in range(int(f[p]))]
        out[f[0]] = (words, ptrs, gloss.strip())
    return out


def medical_synsets(path: str = WORDNET_NOUNS) -> list[Synset]:
    """Every synset in a hyponym tree of :data:`MED_ROOTS` or in the medicine topic domain, sorted
    by offset."""
    nouns = _parse_nouns(path)
    keep: set[str] = {o for o, (_, ptrs, _) in nouns.items()
                      if any(s == ";c" and t == MEDICINE_DOMAIN for s, t, _ in ptrs)}
    stack = list(MED_ROOTS.values())
    while stack:
        o = stack.pop()
        if o in keep and o not in MED_ROOTS.values():
            continue
        keep.add(o)
        stack += [t for s, t, pos in nouns[o][1] if s in ("~", "~i") and pos == "n" and t not in keep]
    out = []
    for o in sorted(keep):
        words, _, gloss = nouns[o]
        names = tuple(dict.fromkeys(normalise(w.replace("_", " ")) for w in words))
        defs = tuple(normalise(d) for d in gloss.split('"', 1)[0].split(";") if len(normalise(d).split()) >= 3)
        exs = tuple(normalise(e) for e in re.findall(r'"([^"]+)"', gloss) if not re.search(r"[0-9]", e))
        out.append(Synset(o, tuple(n for n in names if n), defs, exs))
    return out


def gloss_sentences(s: Synset) -> list[str]:
    """The synset spoken: its first name with its first definition, and its examples, each
    :data:`MIN_CHARS`-:data:`MAX_CHARS` characters and 5+ words."""
    out = []
    if s.names and s.definitions:
        d = s.definitions[0]
        verb = "is" if d.split()[0] in ("a", "an", "the", "any", "one") else "refers to"
        out.append(f"{s.names[0]} {verb} {d}")
    out += list(s.examples)
    return [t for t in dict.fromkeys(out) if MIN_CHARS <= len(t) <= MAX_CHARS and len(t.split()) >= 5]


# ----------------------------------------------------------------------------- frames
FRAME_GROUPS = {
    "orders": ["start {drug} {dose} milligrams by mouth {freq}", "give {drug} {dose} milligrams intravenously now",
               "please hold the {drug} tonight because of the {condition}", "switch her from {drug} to {drug2}",
               "refill the {drug} for ninety days", "stop the {drug} if the {condition} gets worse",
               "he can take {drug} {freq} for the pain"],
    "history": ["he has a long history of {condition} and had a {procedure} in {year}",
                "her mother had {condition} in her fifties",
                "past medical history is notable for {condition} and {condition2}",
                "he was diagnosed with {condition} when he was {age}",
                "she has been on {drug} for about {count} years", "no previous {procedure} and no {condition}"],
    "findings": ["imaging shows early {condition} without {condition2}", "the scan was read as {condition}",
                 "labs suggest {condition} so we will repeat them tomorrow",
                 "exam today is consistent with mild {condition}", "the pathology report came back as {condition}",
                 "there is no sign of {condition} on the {procedure}"],
    "procedures": ["she is booked for a {procedure} on {day} morning",
                   "the {procedure} went well and he is recovering on the ward",
                   "we discussed the risks of the {procedure} with the family",
                   "consent was signed for {procedure} under general anesthesia",
                   "after the {procedure} we will restart the {drug}"],
    "letters": ["thank you for referring this patient with suspected {condition}",
                "i would be grateful if you could arrange a {procedure}",
                "we have increased her {drug} and will review her in clinic in {count} weeks",
                "he tolerated the {drug} well with no further {condition}"],
    "patient_talk": ["i have been taking the {drug} but it makes me dizzy",
                     "my doctor said it might be {condition}", "do i still need the {drug} after my {procedure}",
                     "the pharmacy gave me {drug} instead of {drug2}",
                     "is {condition} something that runs in families",
                     "how long will it take to get over the {procedure}"],
    "handover": ["bed four is after a {procedure} and needs {drug} at midnight",
                 "the man in room {count} came in with {condition}",
                 "she is allergic to {drug} so use {drug2} instead",
                 "watch him overnight for signs of {condition}",
                 "pharmacy flagged an interaction between {drug} and {drug2}"],
}
_FILL = {
    "dose": ["five", "ten", "twenty", "twenty five", "forty", "fifty", "one hundred", "two hundred fifty",
             "five hundred"],
    "freq": ["once a day", "twice a day", "three times a day", "every six hours", "at bedtime", "as needed"],
    "year": ["twenty nineteen", "twenty twenty one", "two thousand eight", "nineteen ninety nine"],
    "age": ["twelve", "thirty", "forty five", "sixty", "seventy two"],
    "count": ["two", "three", "six", "eleven", "twelve"],
    "day": ["monday", "tuesday", "wednesday", "thursday", "friday"],
}
_KIND = {"drug": r"(mab|nib|pril|olol|sartan|statin|mycin|cillin|azole|pine|done|ide|ine)$",
         "condition": r"(itis|emia|algia|osis|pathy)$",
         "procedure": r"(ectomy|otomy|oscopy|plasty|gram|ostomy)$"}


def term_pools(terms: list[str] | None = None) -> dict[str, list[str]]:
    """hunspell-en-med's terms (:func:`recipes.corpus.medical_terms`) by kind: drug, condition,
    procedure (by suffix)."""
    terms = medical_terms() if terms is None else terms
    return {k: [t for t in terms if re.search(rx, t)] for k, rx in _KIND.items()}


def frame_sentences(rng: random.Random, kinds: list[str], pools: dict[str, list[str]],
                    n: int) -> list[tuple[str, str]]:
    """``n`` distinct ``(sentence, kind)`` pairs: a kind of :data:`FRAME_GROUPS` drawn from ``kinds``,
    one of its frames, and each slot, all with ``rng``."""
    out: dict[str, str] = {}
    while len(out) < n:
        kind = rng.choice(kinds)
        frame = rng.choice(FRAME_GROUPS[kind])
        slots = {}
        for term in ("drug", "condition", "procedure"):
            a, b = rng.sample(pools[term], 2)
            slots[term], slots[term + "2"] = a, b
        slots.update({k: rng.choice(v) for k, v in _FILL.items()})
        out.setdefault(normalise(frame.format(**slots)), kind)
    return list(out.items())
