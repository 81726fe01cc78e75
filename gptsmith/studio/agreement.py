"""Inter-annotator agreement between rankings of the same K responses (best first).

Two rankings agree on a pair of responses when they order it the same way. Pairwise
agreement is the share of the K·(K−1)/2 pairs they agree on; Kendall's tau is
(agreeing − disagreeing) / pairs, from 1 (identical) through 0 (chance) to −1 (reversed).
Rankings here have no ties, so tau = 2·agreement − 1.
"""

from __future__ import annotations

from itertools import combinations


def _positions(ranking: list[int]) -> dict[int, int]:
    return {response: place for place, response in enumerate(ranking)}


def pairwise_agreement(a: list[int], b: list[int]) -> float:
    """Share of response pairs that rankings ``a`` and ``b`` order the same way."""
    if sorted(a) != sorted(b) or len(a) < 2:
        raise ValueError(f"rankings of different responses or fewer than 2: {a} vs {b}")
    pa, pb = _positions(a), _positions(b)
    pairs = list(combinations(sorted(pa), 2))
    same = sum((pa[x] < pa[y]) == (pb[x] < pb[y]) for x, y in pairs)
    return same / len(pairs)


def kendall_tau(a: list[int], b: list[int]) -> float:
    """Kendall's tau between two rankings of the same responses (no ties)."""
    return 2 * pairwise_agreement(a, b) - 1


def agreement(rankings_per_item: list[list[list[int]]]) -> dict:
    """Mean pairwise agreement and Kendall's tau over every pair of annotators of every item
    ranked by two or more (each inner list: one item's rankings by different annotators)."""
    scores = [(pairwise_agreement(a, b), kendall_tau(a, b))
              for rankings in rankings_per_item for a, b in combinations(rankings, 2)]
    shared = sum(len(r) >= 2 for r in rankings_per_item)
    if not scores:
        return {"shared_items": shared, "annotator_pairs": 0, "agreement": None,
                "kendall_tau": None}
    return {"shared_items": shared, "annotator_pairs": len(scores),
            "agreement": sum(s[0] for s in scores) / len(scores),
            "kendall_tau": sum(s[1] for s in scores) / len(scores)}
