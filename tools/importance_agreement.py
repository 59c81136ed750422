#!/usr/bin/env python3
"""Rank agreement of occlusion-importance maps (importance.json files written
by `stptf explain` or by `evaluate` with explain.in_evaluate = true).

    python3 tools/importance_agreement.py RUN/fold-1/importance.json RUN/fold-2/importance.json ...

Prints each map's accuracy on its explained scans, the Spearman correlation
of the region scores for every pair (ties share their mean rank, as
`train::explain::spearman`), their mean, and the regions of best mean rank.
For maps from different runs (seeds) or from folds of a run that did not
finish (`evaluate --collect` compares the folds itself once all are done).
Standard library only.
"""
import json
import sys


def region_scores(importance):
    """Scan-count-weighted mean over classes of each region's mean drop."""
    profiles = importance["regions"]
    total = sum(p["scans"] for p in profiles) or 1
    n = len(profiles[0]["mean"])
    return [sum(p["mean"][i] * p["scans"] for p in profiles) / total for i in range(n)]


def descending_ranks(values):
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b):
    ra, rb = descending_ranks(a), descending_ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    saa = sum((x - ma) ** 2 for x in ra)
    sbb = sum((y - mb) ** 2 for y in rb)
    return 0.0 if saa == 0 or sbb == 0 else sab / (saa * sbb) ** 0.5


def main(paths):
    if len(paths) < 2:
        sys.exit(__doc__)
    maps = [json.load(open(p)) for p in paths]
    scores = [region_scores(m["importance"]) for m in maps]
    for p, m in zip(paths, maps):
        print(f"{p}: {len(m['scan_ids'])} scans, accuracy {m['importance']['accuracy']:.2f}")
    rhos = []
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            rho = spearman(scores[i], scores[j])
            rhos.append(rho)
            print(f"spearman {i + 1} vs {j + 1}: {rho:.3f}")
    print(f"mean pairwise spearman: {sum(rhos) / len(rhos):.3f}")
    ranks = [descending_ranks(s) for s in scores]
    names = maps[0]["region_names"]
    mean_rank = [sum(r[i] for r in ranks) / len(ranks) for i in range(len(names))]
    print("best mean rank: region (0-based), name, mean rank, rank per map")
    for i in sorted(range(len(names)), key=lambda i: (mean_rank[i], i))[:10]:
        print(f"  {i}, {names[i]}, {mean_rank[i]:.1f}, {[int(r[i]) for r in ranks]}")


if __name__ == "__main__":
    main(sys.argv[1:])
