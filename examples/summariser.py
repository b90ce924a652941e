"""A small torch seq2seq summariser, built locally and deterministic (no downloads).

    shoal serve summariser=examples.summariser:Summariser
    curl -s localhost:8000/v1/models/summariser:predict \
         -d '{"instances": ["The city council approved a new budget for public schools ..."]}'

Architecture: an encoder (hashed word embeddings + a bidirectional GRU) and a pointer decoder
(a GRU cell that attends over the encoder states and copies one source word per step, never the
same word twice). Nothing is trained: the embeddings and GRUs are seeded, and the word
salience the decoder's attention adds comes from document frequencies in a small built-in
corpus (rare content words score high, stopwords are masked). The summary is the copied words
in source order: an extractive headline. It shows how a seq2seq model is served (batched,
padded, greedy decoding on the device in a worker thread), not summarisation quality.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any

import shoal

_STOP = """a an the of to in and or is are was were be been being for on at by with from that
this these those it its into than then there their they them he she his her we our you
your i me my as but not no so if about after before over under again also very can could
would should will just more most some such only own same other any each few both all
has have had do does did which who whom what when where why how up down out off new said
says say one two"""
STOPWORDS = frozenset(_STOP.split())
CORPUS = [
    "the government announced a new plan to reduce taxes for small businesses",
    "the team won the final match of the season after a late goal",
    "scientists discovered a new species of frog in the rain forest",
    "the company reported higher profits as sales of phones increased",
    "heavy rain caused floods across the region and closed many roads",
    "the city opened a new park with gardens and a playground for children",
    "doctors recommend regular exercise and a balanced diet for health",
    "the museum will show paintings by famous artists this summer",
    "students returned to school after the long holiday break",
    "the central bank raised interest rates to slow inflation",
]
BUCKETS = 4096


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]*|\d+", text)


class Summariser:
    def __init__(self, max_words: int = 8, seed: int = 0, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.max_words = max_words
        self.device = device
        docs = [set(words(d.lower())) for d in CORPUS]
        n = len(docs)
        self.idf = {w: math.log((n + 1) / (1 + sum(w in d for d in docs))) for s in docs for w in s}
        self.unseen_idf = math.log(n + 1)
        gen = torch.Generator().manual_seed(seed)
        dim, hidden = 16, 16
        self.embed = torch.nn.Embedding(BUCKETS, dim)
        self.encoder = torch.nn.GRU(dim + 1, hidden, batch_first=True, bidirectional=True)
        self.decoder = torch.nn.GRUCell(2 * hidden, 2 * hidden)
        self.query = torch.nn.Linear(2 * hidden, 2 * hidden, bias=False)
        with torch.no_grad():
            for module in (self.embed, self.encoder, self.decoder, self.query):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def _salience(self, word: str) -> float:
        w = word.lower()
        if w in STOPWORDS or len(w) < 3:
            return -math.inf
        return self.idf.get(w, self.unseen_idf)

    @shoal.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    def __call__(self, texts: list[Any]) -> list[Any]:
        checked = [
            t if isinstance(t, str) else ValueError("each input must be a string") for t in texts
        ]
        good = [t for t in checked if isinstance(t, str)]
        summaries = iter(self.summarise(good) if good else [])
        return [c if isinstance(c, Exception) else next(summaries) for c in checked]

    def summarise(self, texts: list[str]) -> list[str]:
        """Encode the padded batch, then decode greedily, copying one word per step."""
        torch = self.torch
        toks = [words(t)[:256] for t in texts]
        length = max(1, *(len(t) for t in toks))
        ids = torch.zeros(len(toks), length, dtype=torch.long)
        sal = torch.full((len(toks), length), -math.inf)
        for b, ws in enumerate(toks):
            for i, w in enumerate(ws):
                ids[b, i] = zlib.crc32(w.lower().encode()) % BUCKETS
                sal[b, i] = self._salience(w)
        ids, sal = ids.to(self.device), sal.to(self.device)
        feats = torch.cat([self.embed(ids), sal.clamp(min=0).unsqueeze(-1)], dim=-1)
        states, _ = self.encoder(feats)  # [B, T, 2h]
        mask = torch.isinf(sal)  # stopwords and padding are never copied
        s = states.mean(dim=1)
        picked: list[list[int]] = [[] for _ in toks]
        for _ in range(self.max_words):
            context = torch.einsum("btd,bd->bt", states, self.query(s))
            scores = sal.masked_fill(mask, -math.inf) + 0.01 * torch.tanh(context)
            best = scores.argmax(dim=1)
            alive = ~torch.isinf(scores.max(dim=1).values)
            if not bool(alive.any()):
                break
            for b in range(len(toks)):
                if alive[b]:
                    p = int(best[b])
                    picked[b].append(p)
                    same = ids[b] == ids[b, p]  # never copy the same word twice
                    mask[b] |= same
            s = self.decoder(states[torch.arange(len(toks)), best], s)
        return [" ".join(toks[b][p] for p in sorted(picked[b])) for b in range(len(toks))]
