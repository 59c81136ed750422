"""Cross-checks `stptf baseline` against scikit-learn on the same folds.

Reads a baseline run directory (its fold-*/predictions.csv give the test scans
of each fold), recomputes the FC features from the ABIDE .1D files with numpy
(Pearson upper triangle, Fisher z, zero-variance regions -> 0, z-scored on the
training fold) and fits sklearn's LogisticRegression(C) on each fold.

    python tools/check_baseline_sklearn.py RUN_DIR DATA_DIR [C]
"""
import csv
import glob
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

run, data = sys.argv[1], sys.argv[2]
c_reg = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0

folds = []
for d in sorted(glob.glob(os.path.join(run, "fold-*"))):
    with open(os.path.join(d, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    folds.append(rows)
ids = [r["scan_id"] for rows in folds for r in rows]
label = {r["scan_id"]: int(r["label"]) for rows in folds for r in rows}
p_ours = {r["scan_id"]: float(r["p_autism"]) for rows in folds for r in rows}

iu = np.triu_indices(200, 1)
feats = {}
for sid in ids:
    x = np.loadtxt(os.path.join(data, sid + "_rois_cc200.1D"), comments="#")  # [T, N]
    x = x - x.mean(axis=0)
    norm = np.sqrt((x * x).sum(axis=0))
    x = np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0.0)
    r = np.clip(x.T @ x, -1 + 1e-7, 1 - 1e-7)
    feats[sid] = np.arctanh(r[iu])

accs, aucs, recs, agree = [], [], [], []
for k, rows in enumerate(folds):
    test = [r["scan_id"] for r in rows]
    tset = set(test)
    train = [s for s in ids if s not in tset]
    xtr = np.stack([feats[s] for s in train])
    xte = np.stack([feats[s] for s in test])
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd < 1e-12] = 1.0
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr = np.array([label[s] for s in train])
    yte = np.array([label[s] for s in test])
    m = LogisticRegression(C=c_reg, max_iter=10000, tol=1e-8).fit(xtr, ytr)
    p = m.predict_proba(xte)[:, 1]
    pred = (p > 0.5).astype(int)
    accs.append(accuracy_score(yte, pred))
    aucs.append(roc_auc_score(yte, p))
    recs.append(recall_score(yte, pred))
    ours = np.array([p_ours[s] for s in test])
    agree.append(np.mean((ours > 0.5) == (p > 0.5)))
    print(f"fold {k+1}: sklearn acc {accs[-1]:.4f} auc {aucs[-1]:.4f}; "
          f"max |p_stptf - p_sklearn| {np.abs(ours - p).max():.2e}; "
          f"same prediction {agree[-1]:.3f}")
for name, v in [("accuracy", accs), ("auc", aucs), ("recall", recs)]:
    v = 100 * np.array(v)
    print(f"{name}: {v.mean():.2f}({v.std(ddof=1):.2f})")
