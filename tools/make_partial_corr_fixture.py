#!/usr/bin/env python3
"""Known-answer fixture for the partial-correlation kernel (docs/design.md §5.4).

Writes tests/fixtures/partial_corr.json: a small seeded input x [B, N, T]
(B=2, N=7, T=40; region 3 of item 0 and region 5 of item 1 all zero, as
masked or out-of-field-of-view ROIs are) and nilearn's
ConnectivityMeasure(kind="partial correlation") of each item, plus the
Ledoit-Wolf shrinkage sklearn chose.

nilearn (checked in 0.14.1) fits sklearn's LedoitWolf(store_precision=False)
to the raw time series for this kind: it centers each region
(assume_centered=False) but does not standardize (its `standardize` applies
to kind="correlation" only), then inverts the shrunk covariance and sets the
diagonal of the partial correlation to 1.

Usage: pip install nilearn scikit-learn; python3 tools/make_partial_corr_fixture.py
"""
import json
import pathlib

import nilearn
import numpy as np
import sklearn
from nilearn.connectome import ConnectivityMeasure
from sklearn.covariance import LedoitWolf

B, N, T = 2, 7, 40
rng = np.random.RandomState(20251)
x = np.empty((B, N, T))
for b in range(B):
    # A few shared latent signals so the partial correlations are not all ~0.
    latent = rng.randn(3, T)
    mixing = rng.randn(N, 3)
    x[b] = mixing @ latent + 0.8 * rng.randn(N, T) + rng.randn(N, 1)
x[0, 3] = 0.0
x[1, 5] = 0.0
# The GPU sees f32: fix the input to f32 values so both sides read the same numbers.
x = x.astype(np.float32).astype(np.float64)

series = [x[b].T for b in range(B)]  # nilearn wants [samples = T, features = N]
measure = ConnectivityMeasure(kind="partial correlation")
partial = np.stack(measure.fit_transform(series))
shrinkage = [float(LedoitWolf(store_precision=False).fit(s).shrinkage_) for s in series]

out = {
    "generator": f"nilearn {nilearn.__version__} ConnectivityMeasure(kind='partial correlation'), "
    f"scikit-learn {sklearn.__version__} LedoitWolf; tools/make_partial_corr_fixture.py",
    "b": B,
    "n": N,
    "t": T,
    "x": x.ravel().tolist(),
    "partial": partial.ravel().tolist(),
    "shrinkage": shrinkage,
}
path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "partial_corr.json"
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(out) + "\n")
print(f"wrote {path}: shrinkage {shrinkage}, finite {np.isfinite(partial).all()}")
