"""Word vocabularies: built from counts with a size or count cut-off, saved as `word count` lines.

The file format is the One Billion Word benchmark's `vocab-2016-09-10.txt`: one `word count`
pair per line, most frequent first. Ids are line numbers, so the most frequent words get the
smallest ids, which is what the log-uniform candidate sampler of the sampled softmax assumes.
"""
import collections
import os
from typing import Iterable, Sequence

import numpy as np

from tfsys.errors import UserError


class Vocabulary:
  """A fixed word list with an unknown-word id and a sentence-end id."""

  def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None,
               unk: str = "<unk>", eos: str = "<eos>"):
    words = list(words)
    for special in (unk, eos):
      if special not in words:
        raise UserError(f"vocabulary has no {special!r} entry (needed as the "
                        f"{'unknown-word' if special == unk else 'sentence-end'} token)")
    if len(set(words)) != len(words):
      dupes = [w for w, c in collections.Counter(words).items() if c > 1][:5]
      raise UserError(f"vocabulary lists words more than once: {dupes}")
    self.words = words
    self.counts = list(counts) if counts is not None else [0] * len(words)
    self.unk, self.eos = unk, eos
    self._ids = {w: i for i, w in enumerate(words)}
    self.unk_id = self._ids[unk]
    self.eos_id = self._ids[eos]

  def __len__(self):
    return len(self.words)

  def id(self, word: str) -> int:
    return self._ids.get(word, self.unk_id)

  def encode(self, words: Iterable[str]) -> np.ndarray:
    return np.fromiter((self._ids.get(w, self.unk_id) for w in words), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> list[str]:
    return [self.words[int(i)] for i in ids]

  def save(self, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for w, c in zip(self.words, self.counts):
        f.write(f"{w} {c}\n")
    os.replace(tmp, path)  # atomic: a crash never leaves half a vocabulary

  @classmethod
  def load(cls, path: str, unk: str = "<unk>", eos: str = "<eos>",
           max_size: int = 0) -> "Vocabulary":
    """Reads `word count` lines (or bare words); keeps the first `max_size` if > 0."""
    if not os.path.isfile(path):
      raise UserError(f"vocabulary file not found: {path}")
    words, counts = [], []
    with open(path, encoding="utf-8", errors="strict") as f:
      for lineno, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
          raise UserError(f"{path}:{lineno}: expected 'word count', got {line.strip()[:80]!r}")
        words.append(parts[0])
        counts.append(int(parts[1]) if len(parts) == 2 else 0)
    if not words:
      raise UserError(f"vocabulary file is empty: {path}")
    if max_size:
      # Keep the specials even when the cut-off would drop them.
      keep = words[:max_size]
      extra = [s for s in (unk, eos) if s not in keep and s in words]
      keep = keep[:max_size - len(extra)] + extra
      idx = {w: i for i, w in enumerate(words)}
      counts = [counts[idx[w]] for w in keep]
      words = keep
    return cls(words, counts, unk=unk, eos=eos)

  @classmethod
  def build(cls, sentences: Iterable[Sequence[str]], max_size: int = 0, min_count: int = 1,
            unk: str = "<unk>", eos: str = "<eos>") -> "Vocabulary":
    """Counts words (each sentence also counts one `eos`) and keeps the most frequent.

    max_size > 0 caps the size including the specials; min_count drops rarer words.
    Ties are broken alphabetically so the result does not depend on reading order.
    """
    counter = collections.Counter()
    n = 0
    for sentence in sentences:
      counter.update(sentence)
      n += 1
    counter[eos] += n
    unk_count = counter.pop(unk, 0)
    ranked = sorted(counter.items(), key=lambda wc: (-wc[1], wc[0]))
    kept = [(w, c) for w, c in ranked if c >= min_count]
    if max_size:
      kept = kept[:max_size - 1]  # one slot for unk
    dropped = sum(c for _, c in ranked) - sum(c for _, c in kept)
    if eos not in dict(kept):
      kept.append((eos, counter[eos]))
    kept.append((unk, unk_count + dropped))
    kept.sort(key=lambda wc: (-wc[1], wc[0]))
    return cls([w for w, _ in kept], [c for _, c in kept], unk=unk, eos=eos)
