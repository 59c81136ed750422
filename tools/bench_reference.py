"""Time one pretraining step of the PyTorch reference in float32, for the
README's side-by-side step-time table.

One step = forward of the three views (X, X_S, X_T; the static Ledoit-Wolf
graph of each view included), FGCO `global` loss, backward, AdamW step
(lr 1e-3, betas 0.9/0.999, weight decay 1e-4). The SCA/TCA masks are drawn
once before timing (uniform, p = 0.2); applying them is inside the step.
Median over repeats after warm-up.

    python tools/bench_reference.py                    # paper and ABIDE configs
    python tools/bench_reference.py --configs paper --repeats 20
    python tools/bench_reference.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_model as rm  # noqa: E402

COMMON = dict(batch=32, crop=128, node_channels=32, width=128, embed_dim=16, window=30, stride=15, segment=16, qk_dim=64, proj_dim=256, n_classes=2)
CONFIGS = {
    "paper": dict(COMMON, n_regions=22),
    "abide": dict(COMMON, n_regions=200),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, cfg: rm.Config, device: torch.device, warmup: int, repeats: int, norm: str) -> dict:
    cfg = rm.Config(**{**cfg.to_dict(), "norm": norm})
    model = rm.ReferenceModel(cfg, seed=0, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    B, N, T = cfg.batch, cfg.n_regions, cfg.crop
    X = torch.randn(B, N, T, generator=g)
    X = ((X - X.mean(-1, keepdim=True)) / X.std(-1, keepdim=True)).to(device)
    roi = (torch.rand(B, N, generator=g) >= 0.2).float().to(device)
    frm = (torch.rand(B, T, generator=g) >= 0.2).float().to(device)
    valid = torch.ones(B, T, device=device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        p = model.params_dict()
        loss = rm.loss_fgco_global(p, cfg, X, X * roi[:, :, None], X * frm[:, None, :], valid)
        loss.backward()
        opt.step()
        return loss.detach()

    times = []
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    loss = float(loss)
    n_params = sum(p.numel() for p in model.parameters())
    med = statistics.median(times) * 1e3
    print(
        f"{name:6s} B={B} N={N} T={T} F={cfg.node_channels} D={cfg.width} norm={norm}  params={n_params}  "
        f"{med:9.1f} ms/step (median of {repeats}; min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})  loss {loss:.4f}",
        flush=True,
    )
    return dict(name=name, ms_median=med, times_ms=[t * 1e3 for t in times])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="paper,abide", help="comma-separated: " + ",".join(CONFIGS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--norm", default="none", choices=("none", "layer"))
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} logical cores)"
    print(f"torch {torch.__version__}, device {device} [{dev_name}], threads {torch.get_num_threads()}, float32, "
          f"step = 3-view forward + FGCO global + backward + AdamW", flush=True)
    for name in args.configs.split(","):
        bench(name, rm.Config(**CONFIGS[name]), device, args.warmup, args.repeats, args.norm)


if __name__ == "__main__":
    main()
