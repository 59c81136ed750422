"""Write the golden fixtures of the whole-model parity test under
tests/fixtures/model/<case>/ (see tools/README.md).

    python tools/make_model_fixtures.py [--out tests/fixtures/model]

Each case: config.json, params.safetensors (float32 weights the Rust side
loads), inputs.safetensors, grads_<loss>.safetensors for the three losses and
intermediates.safetensors. Goldens are computed in float64 from the float32
weights and inputs (cast up), then stored as float32; the loss values are in
config.json at full float64 precision. Deterministic: same files every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_model as rm  # noqa: E402

TINY = dict(batch=4, n_regions=7, crop=32, node_channels=8, width=16, embed_dim=4, window=10, stride=5, segment=8, qk_dim=8, proj_dim=16, n_classes=2)

CASES = [
    dict(
        name="base",
        description="T = 32 (divisible by P = 8), initial weights, every frame real, no zero region",
        cfg=dict(TINY),
        seed=0,
        full_intermediates=True,
    ),
    dict(
        name="t30",
        description="T = 30, not divisible by P = 8 (segments 8, 8, 8, 6), initial weights",
        cfg=dict(TINY, crop=30),
        seed=1,
    ),
    dict(
        name="edge",
        description="T = 32; region 3 of scan 1 is all zero in X (so in every view); scan 3 is padded: "
        "frames 20..31 are zero with valid = 0 (segment 2 partly, segment 3 wholly padded); "
        "scan 2 keeps a single region in X_S; initial weights",
        cfg=dict(TINY),
        seed=2,
        zero_region=(1, 3),
        padded=(3, 20),
        single_region=2,
    ),
    dict(
        name="layer",
        description="norm = layer, T = 30; weights perturbed from init (non-zero biases, alpha, mix) "
        "so every parameter path is exercised away from ReLU kinks",
        cfg=dict(TINY, crop=30, norm="layer"),
        seed=3,
        perturb=0.2,
    ),
    dict(
        name="pearson",
        description="node_features = pearson, T = 30 (3 windows of 10, the last frames on window 2); region 3 of "
        "scan 1 all zero and scan 3 padded from frame 20, so zero rows of R; weights perturbed from init",
        cfg=dict(TINY, crop=30, node_features="pearson"),
        seed=4,
        zero_region=(1, 3),
        padded=(3, 20),
        perturb=0.2,
    ),
    dict(
        name="partial",
        description="node_features = partial (the static graph's Ledoit-Wolf partial correlation rows), T = 32, "
        "region 3 of scan 1 all zero; weights perturbed from init",
        cfg=dict(TINY, node_features="partial"),
        seed=5,
        zero_region=(1, 3),
        perturb=0.2,
    ),
]

# Intermediates (to keep the files small): every view gets ALL_VIEW_KEYS; view X
# gets X_KEYS, and in the case marked full_intermediates X_KEYS_FULL.
ALL_VIEW_KEYS = ("A_static", "A_dynamic", "Z_st", "logits")
X_KEYS = ("A_static", "A_dynamic", "beta", "Z_spatial", "Z_temporal", "seg_attn", "seg_weights", "Z_st", "logits")
X_KEYS_FULL = ("A_static", "A_dynamic", "Z_s", "Z_d", "beta", "Z_spatial", "CCM", "TAW", "CAM", "Z_temporal", "seg_attn", "seg_weights", "Z_st", "logits")


def make_inputs(cfg: rm.Config, case: dict) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(1000 + case["seed"])
    B, N, T = cfg.batch, cfg.n_regions, cfg.crop
    # correlated regions (so the partial correlations are not all ~0): a
    # random mixing of latent series, then z-scored per scan and region
    mix = torch.randn(B, N, N, generator=g, dtype=torch.float64) / N**0.5 + torch.eye(N, dtype=torch.float64)
    X = mix @ torch.randn(B, N, T, generator=g, dtype=torch.float64)
    X = (X - X.mean(-1, keepdim=True)) / X.std(-1, keepdim=True)
    valid = torch.ones(B, T, dtype=torch.float64)
    roi = (torch.rand(B, N, generator=g) < 0.75).double()
    frm = (torch.rand(B, T, generator=g) < 0.75).double()
    if "zero_region" in case:
        b, n = case["zero_region"]
        X[b, n] = 0.0
    if "padded" in case:
        b, n_real = case["padded"]
        X[b, :, n_real:] = 0.0
        valid[b, n_real:] = 0.0
        frm[b, n_real:] = 1.0  # TCA gives padded frames p = 0 (they are zero anyway)
    if "single_region" in case:
        b = case["single_region"]
        roi[b] = 0.0
        roi[b, 0] = 1.0
    labels = (torch.arange(B) % cfg.n_classes).double()
    out = OrderedDict(X=X, roi_mask=roi, frame_mask=frm, valid=valid, labels=labels)
    # the goldens are computed from exactly the float32 values stored
    return OrderedDict((k, v.float()) for k, v in out.items())


def make_params(cfg: rm.Config, case: dict) -> "OrderedDict[str, torch.Tensor]":
    p = rm.init_params(cfg, case["seed"], torch.float32)
    if case.get("perturb"):
        g = torch.Generator().manual_seed(2000 + case["seed"])
        p = OrderedDict((k, (v.double() + case["perturb"] * torch.randn(v.shape, generator=g, dtype=torch.float64)).float()) for k, v in p.items())
    return p


def run_loss(kind, params, cfg, inputs, dtype):
    p = OrderedDict((k, v.detach().to(dtype).requires_grad_(True)) for k, v in params.items())
    batch = {k: v.to(dtype) for k, v in inputs.items()}
    outs = []
    loss = rm.compute_loss(kind, p, cfg, batch, outs)
    loss.backward()
    grads = OrderedDict((k, v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in p.items())
    return loss.item(), grads, outs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def write_case(root: str, case: dict) -> dict:
    cfg = rm.Config(**case["cfg"])
    d = os.path.join(root, case["name"])
    os.makedirs(d, exist_ok=True)
    params = make_params(cfg, case)
    inputs = make_inputs(cfg, case)
    rm.save_tensors(os.path.join(d, "params.safetensors"), params)
    rm.save_tensors(os.path.join(d, "inputs.safetensors"), inputs)

    losses = OrderedDict()
    inter = OrderedDict()
    for kind in rm.LOSSES:
        val, grads, outs = run_loss(kind, params, cfg, inputs, torch.float64)
        unused = rm.unused_params(cfg, kind)
        for k in unused:
            assert float(grads[k].abs().max()) == 0.0, (kind, k)
        rm.save_tensors(os.path.join(d, f"grads_{kind}.safetensors"), grads)
        # how far plain float32 PyTorch lands from the float64 golden: a hint
        # for the Rust side's tolerances
        val32, grads32, _ = run_loss(kind, params, cfg, inputs, torch.float32)
        # gradients that are zero in exact arithmetic although the parameter
        # is used: softmax is shift-invariant (calib.mix.bias, calib.k.bias)
        # and standardisation removes a per-feature constant (proj biases in
        # fgco_global); float roundoff leaves ~1e-17 there (stored as computed)
        gmax = max(float(g.abs().max()) for g in grads.values())
        zero_exact = [k for k in grads if k not in unused and float(grads[k].abs().max()) <= 1e-10 * gmax]
        used = [k for k in grads if k not in unused and k not in zero_exact]
        worst = max(used, key=lambda k: rel_err(grads32[k], grads[k]))
        losses[kind] = OrderedDict(
            value=val,
            zero_grad_params=unused,
            analytically_zero_grad_params=zero_exact,
            max_abs_grad=gmax,
            f32_torch_loss_rel_err=abs(val32 - val) / abs(val),
            f32_torch_grad_max_rel_err=rel_err(grads32[worst], grads[worst]),
            f32_torch_grad_worst_param=worst,
            f32_torch_grad_max_abs_err_over_max_abs_grad=max(float((grads32[k].double() - grads[k]).abs().max()) for k in grads) / gmax,
        )
        if kind == "fgco_global":  # the three views' forwards
            for view, o in zip(("X", "X_S", "X_T"), outs):
                keys = (X_KEYS_FULL if case.get("full_intermediates") else X_KEYS) if view == "X" else ALL_VIEW_KEYS
                for key in keys:
                    inter[f"{view}.{key}"] = o[key]
        if kind == "fgco_fine":  # R of the fine loss, [B*F, N]
            inter["fine.R_X"] = rm.fine_region_embedding(outs[0])
            inter["fine.R_X_S"] = rm.fine_region_embedding(outs[1])
    rm.save_tensors(os.path.join(d, "intermediates.safetensors"), inter)

    meta = OrderedDict(
        case=case["name"],
        description=case["description"],
        seed=case["seed"],
        params_perturbed_from_init=case.get("perturb", 0.0),
        config=OrderedDict(cfg.to_dict(), n_windows=cfg.n_windows, n_segments=cfg.n_segments),
        constants=OrderedDict(bt_lambda=rm.BT_LAMBDA, bn_eps=rm.BN_EPS, ln_eps=rm.LN_EPS),
        views="X_S = X * roi_mask[:, :, None]; X_T = X * frame_mask[:, None, :]; valid applies to all three views",
        labels="inputs.labels holds class indices as float32",
        precision="goldens computed in float64 from the stored float32 weights and inputs, stored as float32; loss values below in float64",
        losses=losses,
        param_names=list(params.keys()),
        intermediates=OrderedDict((k, list(v.shape)) for k, v in inter.items()),
        torch_version=torch.__version__,
    )
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "model"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic reductions
    root = os.path.normpath(args.out)
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    total = 0
    for case in CASES:
        meta = write_case(root, case)
        d = os.path.join(root, case["name"])
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        total += size
        c = meta["config"]
        print(f"{case['name']:15s} B={c['batch']} N={c['n_regions']} T={c['crop']} norm={c['norm']} residual={c['residual']}  {size / 1024:.1f} KiB")
        for kind, v in meta["losses"].items():
            print(
                f"    {kind:12s} loss = {v['value']:.12g}   f32 torch: loss rel err {v['f32_torch_loss_rel_err']:.1e}, "
                f"worst grad rel err {v['f32_torch_grad_max_rel_err']:.1e} ({v['f32_torch_grad_worst_param']}), "
                f"max abs grad err / max abs grad {v['f32_torch_grad_max_abs_err_over_max_abs_grad']:.1e}"
            )
    print(f"total {total / 1024:.1f} KiB in {root}")


if __name__ == "__main__":
    main()
