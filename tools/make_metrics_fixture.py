"""Known answers for src/train/metrics.rs from scikit-learn.

Writes tests/fixtures/metrics_sklearn.json: a few binary and multi-class cases
(probabilities, labels) with scikit-learn's accuracy (argmax, first maximum on
ties), ROC AUC (binary; macro one-vs-rest for more classes), recall (binary: of
class 1; multi-class: macro) and, for binary cases, the full ROC curve
(drop_intermediate=False). Cases with tied scores check that ties count 1/2.

    pip install scikit-learn numpy
    python tools/make_metrics_fixture.py
"""
import json
import os

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score, roc_curve


def case(name, probs, labels):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    out = {
        "name": name,
        "classes": classes,
        "labels": labels.tolist(),
        "probabilities": probs.tolist(),
        "accuracy": float(accuracy_score(labels, pred)),
    }
    if classes == 2:
        out["auc"] = float(roc_auc_score(labels, probs[:, 1]))
        out["recall"] = float(recall_score(labels, pred, pos_label=1))
        fpr, tpr, _ = roc_curve(labels, probs[:, 1], drop_intermediate=False)
        out["roc_fpr"] = fpr.tolist()
        out["roc_tpr"] = tpr.tolist()
    else:
        out["auc"] = float(
            roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        )
        out["recall"] = float(recall_score(labels, pred, average="macro"))
    return out


def binary(p):
    p = np.asarray(p)
    return np.stack([1.0 - p, p], axis=1)


rng = np.random.default_rng(20261122)
cases = []

labels = rng.integers(0, 2, 60)
scores = 1 / (1 + np.exp(-(labels * 1.0 + rng.normal(0, 1.2, 60))))
cases.append(case("binary_no_ties", binary(scores), labels))

labels = rng.integers(0, 2, 80)
scores = np.round(1 / (1 + np.exp(-(labels * 0.8 + rng.normal(0, 1.0, 80)))), 1)
cases.append(case("binary_many_ties", binary(scores), labels))

cases.append(case("binary_all_tied", binary(np.full(10, 0.3)), [0, 1] * 5))
cases.append(case("binary_perfect", binary([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1]))
cases.append(case("binary_inverted", binary([0.9, 0.8, 0.2, 0.1]), [0, 0, 1, 1]))

labels = rng.integers(0, 3, 90)
logits = rng.normal(0, 1, (90, 3))
logits[np.arange(90), labels] += 1.0
probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
cases.append(case("three_classes", probs, labels))

labels = np.repeat(np.arange(4), 10)
rng.shuffle(labels)
# Each row is one of six prototype probability vectors, so every
# one-vs-rest column is full of ties; prototypes favour the true class.
protos = rng.dirichlet(np.ones(4), 6)
choice = np.array([(l + rng.integers(0, 3)) % 6 for l in labels])
probs = protos[choice]
cases.append(case("four_classes_ties", probs, labels))

here = os.path.dirname(os.path.abspath(__file__))
path = os.path.join(here, "..", "tests", "fixtures", "metrics_sklearn.json")
with open(path, "w") as f:
    json.dump({"generator": "tools/make_metrics_fixture.py",
               "sklearn": sklearn.__version__, "cases": cases}, f, indent=1)
    f.write("\n")
print("wrote", os.path.normpath(path), len(cases), "cases")
