"""Issue 9 screen: does a crop of T frames cap a linear read of the Pearson
correlation on ABIDE? (results/abide_accuracy.md, "Fitting the training scans")

Only the training scans of one outer fold are used (the scans listed in that
fold's predictions.csv, its test scans, are left out), in an inner 5-fold
stratified CV (numpy seed 0), so the screen never sees a test fold. A ridge
classifier (dual form, targets ±1, features standardized on the inner
training scans) reads the upper triangle of the Pearson correlation of:
  - the whole scan (what `stptf baseline` uses);
  - the first T frames ("one crop");
  - the mean of the correlations of K = 4 evenly spaced crops of T frames,
    in training and test (for a linear read, what averaging the logits of K
    evaluation crops amounts to);
  - 4 random crops per training scan as samples, tested on the 4-crop mean
    (how `stptf` trains: one random crop per scan per epoch).
The numbers are a screen for choosing what to run in `stptf evaluate`, not
results. Needs numpy only:

    python3 tools/screen_crop_ridge.py --data ../shared/data/abide_cc200 \
        --exclude RUN/fold-1/predictions.csv --crops 64 128
"""

from __future__ import annotations

import argparse
import csv
import glob
import os

import numpy as np


def pearson_upper(a: np.ndarray, iu) -> np.ndarray:
    a = a - a.mean(0)
    s = a.std(0)
    s[s == 0] = 1.0
    a = a / s
    return (a.T @ a / len(a))[iu]


def evenly_spaced(length: int, t: int, k: int) -> list[int]:
    if length <= t:
        return [0]
    return sorted({int(round(i * (length - t) / max(k - 1, 1))) for i in range(k)})


def ridge_scores(xtr, ytr, xte, lam):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    t = 2.0 * ytr - 1.0
    alpha = np.linalg.solve(a @ a.T + lam * np.eye(len(a)), t - t.mean())
    return b @ (a.T @ alpha)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="ABIDE CC200 directory (.1D files, phenotypic.csv)")
    ap.add_argument("--exclude", required=True, help="a fold's predictions.csv: its scans are left out")
    ap.add_argument("--crops", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1e3, 1e4, 1e5])
    args = ap.parse_args()

    test = {r["scan_id"] for r in csv.DictReader(open(args.exclude))}
    dx = {r["FILE_ID"]: int(r["DX_GROUP"]) for r in csv.DictReader(open(os.path.join(args.data, "phenotypic.csv")))}
    series, labels = [], []
    for f in sorted(glob.glob(os.path.join(args.data, "*.1D"))):
        sid = os.path.basename(f).replace("_rois_cc200.1D", "")
        if sid in test or sid not in dx:
            continue
        series.append(np.loadtxt(f, comments="#"))
        labels.append(1 if dx[sid] == 1 else 0)  # DX_GROUP 1 = autism, the positive class
    y = np.array(labels)
    n, regions = len(series), series[0].shape[1]
    print(f"{n} training scans ({y.sum()} autism), {regions} regions")
    iu = np.triu_indices(regions, 1)
    rng = np.random.default_rng(0)
    folds = np.zeros(n, int)
    for c in (0, 1):
        idx = np.where(y == c)[0]
        rng.shuffle(idx)
        folds[idx] = np.arange(len(idx)) % 5

    def evaluate(name, train_features, test_features, lam):
        acc = []
        for k in range(5):
            tr, te = np.where(folds != k)[0], np.where(folds == k)[0]
            xtr, ytr = train_features(tr)
            s = ridge_scores(xtr, ytr, test_features(te), lam)
            acc.append(np.mean((s > 0) == (y[te] == 1)))
        print(f"{name:46s} lambda {lam:8.0f}  accuracy {100 * np.mean(acc):.1f} ({100 * np.std(acc, ddof=1):.1f})", flush=True)

    whole = np.array([pearson_upper(a, iu) for a in series])
    for lam in args.lambdas:
        evaluate("whole scan", lambda i: (whole[i], y[i]), lambda i: whole[i], lam)
    for t in args.crops:
        one = np.array([pearson_upper(a[:t], iu) for a in series])
        mean4 = np.array([np.mean([pearson_upper(a[s:s + t], iu) for s in evenly_spaced(len(a), t, 4)], 0) for a in series])

        def random_crops(idx, reps=4, t=t):
            rows, ys = [], []
            for i in idx:
                for _ in range(reps):
                    s = rng.integers(0, max(len(series[i]) - t, 0) + 1)
                    rows.append(pearson_upper(series[i][s:s + t], iu))
                    ys.append(y[i])
            return np.array(rows), np.array(ys)

        for lam in args.lambdas:
            evaluate(f"one crop, T {t}", lambda i: (one[i], y[i]), lambda i: one[i], lam)
            evaluate(f"4-crop mean, T {t}", lambda i: (mean4[i], y[i]), lambda i: mean4[i], lam)
            evaluate(f"4 random crops / 4-crop mean, T {t}", random_crops, lambda i: mean4[i], lam)


if __name__ == "__main__":
    main()
