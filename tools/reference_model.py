"""Independent PyTorch reference of the STPTF model, written from docs/model.md.

Everything here is plain PyTorch; autograd computes every gradient, so the
goldens it produces are independent of stptf's hand-written backward kernels.

Layout follows docs/model.md literally:
  * a linear layer is ``y = x @ W + b`` with ``W`` stored ``[in, out]``;
  * 1-D convolutions store ``[out, in, k]`` (PyTorch's own layout);
  * parameters carry exactly the documented safetensors names.

The forward is dtype-generic: the fixture generator loads the float32 initial
weights, casts them (and the inputs) to float64 and runs everything in float64,
so the golden values are precise; the benchmark runs float32.

Usage::

    cfg = Config(n_regions=7, crop=32, node_channels=8, width=16, ...)
    model = ReferenceModel(cfg, seed=0)          # init per the table
    model.save_params("params.safetensors")      # float32, documented names
    out = forward(model.params_dict(), cfg, X, valid)   # intermediates
    loss = loss_fgco_global(model.params_dict(), cfg, X, X_S, X_T, valid)
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as Fn

Tensor = torch.Tensor
Params = Dict[str, Tensor]

BT_LAMBDA = 0.0051  # Barlow Twins off-diagonal weight (alpha_off)
BN_EPS = 1e-5  # BatchNorm / Barlow-Twins standardisation epsilon
LN_EPS = 1e-5  # LayerNorm epsilon (model.norm = "layer")


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------


@dataclass
class Config:
    """Sizes and switches. Field names are the config keys of docs/model.md
    (``n_regions`` and ``n_classes`` come from the data)."""

    batch: int = 64  # B
    n_regions: int = 200  # N
    crop: int = 128  # T
    node_channels: int = 32  # F
    width: int = 128  # D
    embed_dim: int = 16  # d
    window: int = 30  # L
    stride: int = 15  # S
    segment: int = 16  # P
    qk_dim: int = 64  # Q
    proj_dim: int = 256  # J
    n_classes: int = 2  # C
    norm: str = "none"  # "none" | "layer"
    residual: str = "spatial"  # "spatial" | "input" (input: no residual, see docs)
    node_features: str = "series"  # "series" | "pearson" | "partial" (a region's row of the crop's matrix)

    def __post_init__(self) -> None:
        if self.norm not in ("none", "layer"):
            raise ValueError(f"norm must be 'none' or 'layer', got {self.norm!r}")
        if self.residual not in ("spatial", "input"):
            raise ValueError(f"residual must be 'spatial' or 'input', got {self.residual!r}")
        if self.node_features not in ("series", "pearson", "partial"):
            raise ValueError(f"node_features must be 'series', 'pearson' or 'partial', got {self.node_features!r}")
        if self.crop < self.window:
            raise ValueError(f"crop T={self.crop} shorter than the window L={self.window}")

    @property
    def n_windows(self) -> int:
        return (self.crop - self.window) // self.stride + 1

    @property
    def n_segments(self) -> int:
        return -(-self.crop // self.segment)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------
# parameters: names, shapes, init
# --------------------------------------------------------------------------

# init kinds: ("xavier", fan_in, fan_out) | ("zeros",) | ("ones",) | ("normal", std)


def param_specs(cfg: Config) -> "OrderedDict[str, Tuple[Tuple[int, ...], tuple]]":
    """Ordered ``name -> (shape, init)`` exactly as the table of docs/model.md."""
    N, F, D, d = cfg.n_regions, cfg.node_channels, cfg.width, cfg.embed_dim
    L, Q, J, C = cfg.window, cfg.qk_dim, cfg.proj_dim, cfg.n_classes
    s: "OrderedDict[str, Tuple[Tuple[int, ...], tuple]]" = OrderedDict()

    def xav(shape, fan_in, fan_out):
        return (tuple(shape), ("xavier", fan_in, fan_out))

    def zeros(shape):
        return (tuple(shape), ("zeros",))

    lift_in = 1 if cfg.node_features == "series" else N  # a value per frame, or a connectivity profile
    for br in ("static", "dynamic"):
        s[f"{br}.lift.weight"] = xav([lift_in, F], lift_in, F)
        s[f"{br}.lift.bias"] = zeros([F])
        for g in ("gcn1", "gcn2"):
            s[f"{br}.{g}.weight"] = xav([F, F], F, F)
            s[f"{br}.{g}.bias"] = zeros([F])
    s["dynamic.window_proj.weight"] = xav([L, d], L, d)
    s["dynamic.node_embedding"] = ((N, d), ("normal", 1.0 / math.sqrt(d)))  # N(0, 1/d): variance 1/d
    s["fusion.alpha"] = zeros([2])
    s["fusion.proj.weight"] = xav([N * F, D], N * F, D)
    s["fusion.proj.bias"] = zeros([D])
    s["calib.q.weight"] = xav([Q, D, 3], D * 3, Q * 3)
    s["calib.q.bias"] = zeros([Q])
    s["calib.k.weight"] = xav([Q, D, 3], D * 3, Q * 3)
    s["calib.k.bias"] = zeros([Q])
    s["calib.v.weight"] = xav([D, D, 3], D * 3, D * 3)
    s["calib.v.bias"] = zeros([D])
    s["calib.mix.weight"] = xav([2], 2, 1)
    s["calib.mix.bias"] = zeros([1])
    s["calib.out.weight"] = xav([D, D, 1], D, D)
    s["calib.out.bias"] = zeros([D])
    s["agg.w1"] = xav([D, D], D, D)
    s["agg.v1"] = xav([D], D, 1)
    s["agg.w2"] = xav([D, D], D, D)
    s["agg.v2"] = xav([D], D, 1)
    s["proj.fc1.weight"] = xav([D, J], D, J)
    s["proj.fc1.bias"] = zeros([J])
    s["proj.bn.weight"] = ((J,), ("ones",))
    s["proj.bn.bias"] = zeros([J])
    s["proj.fc2.weight"] = xav([J, J], J, J)
    s["proj.fc2.bias"] = zeros([J])
    s["head.weight"] = xav([D, C], D, C)
    s["head.bias"] = zeros([C])
    if cfg.norm == "layer":
        for where in ("fusion", "out"):
            s[f"norm.{where}.weight"] = ((D,), ("ones",))
            s[f"norm.{where}.bias"] = zeros([D])
    return s


def init_params(cfg: Config, seed: int, dtype: torch.dtype = torch.float32) -> "OrderedDict[str, Tensor]":
    """Initial parameters per the table, drawn from a seeded CPU generator in
    the order of :func:`param_specs` (float64 draws, then cast)."""
    gen = torch.Generator().manual_seed(seed)
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    for name, (shape, init) in param_specs(cfg).items():
        kind = init[0]
        if kind == "xavier":
            bound = math.sqrt(6.0 / (init[1] + init[2]))
            t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        elif kind == "normal":
            t = torch.randn(shape, generator=gen, dtype=torch.float64) * init[1]
        elif kind == "zeros":
            t = torch.zeros(shape, dtype=torch.float64)
        elif kind == "ones":
            t = torch.ones(shape, dtype=torch.float64)
        else:  # pragma: no cover
            raise AssertionError(kind)
        out[name] = t.to(dtype)
    return out


def check_params(cfg: Config, params: Params) -> None:
    specs = param_specs(cfg)
    missing = [k for k in specs if k not in params]
    extra = [k for k in params if k not in specs]
    if missing or extra:
        raise ValueError(f"parameter names differ from docs/model.md: missing {missing}, unexpected {extra}")
    for k, (shape, _) in specs.items():
        if tuple(params[k].shape) != shape:
            raise ValueError(f"{k}: shape {tuple(params[k].shape)}, expected {shape}")


def save_tensors(path: str, tensors: Dict[str, Tensor], dtype: torch.dtype = torch.float32, metadata=None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to(dtype).contiguous().cpu() for k, v in tensors.items()}, path, metadata=metadata)


def load_tensors(path: str) -> "OrderedDict[str, Tensor]":
    from safetensors.torch import load_file

    return OrderedDict(load_file(path))


# --------------------------------------------------------------------------
# 1. static graph: Ledoit-Wolf partial correlation (no gradient)
# --------------------------------------------------------------------------


def ledoit_wolf_covariance(X: Tensor) -> Tuple[Tensor, Tensor]:
    """Ledoit-Wolf shrunk covariance of each scan, exactly as
    ``sklearn.covariance.ledoit_wolf(x.T)`` (assume_centered=False: the T
    samples are centred; empirical covariance with divisor T).

    X: [B, N, T] (features = N regions, samples = T frames).
    Returns (covariance [B, N, N], shrinkage [B]).
    """
    B, N, T = X.shape
    Xc = X - X.mean(dim=2, keepdim=True)
    emp = Xc @ Xc.transpose(1, 2) / T  # [B, N, N]
    X2 = Xc * Xc
    emp_cov_trace = X2.sum(dim=2) / T  # [B, N]
    mu = emp_cov_trace.sum(dim=1) / N  # [B]
    if N == 1:  # sklearn: "only one feature, shrinkage is 0"
        shrink = torch.zeros(B, dtype=X.dtype, device=X.device)
    else:
        beta_ = (X2.sum(dim=1) ** 2).sum(dim=1)  # sum(X2.T @ X2) = sum_t (sum_i x_it^2)^2
        delta_ = (emp * emp).sum(dim=(1, 2))  # sum((X.T X)^2) / n^2
        beta = (beta_ / T - delta_) / (N * T)
        delta = (delta_ - 2.0 * mu * emp_cov_trace.sum(dim=1) + N * mu * mu) / N
        beta = torch.minimum(beta, delta)
        shrink = torch.where(beta == 0, torch.zeros_like(beta), beta / torch.where(delta == 0, torch.ones_like(delta), delta))
    eye = torch.eye(N, dtype=X.dtype, device=X.device)
    cov = (1.0 - shrink)[:, None, None] * emp + (shrink * mu)[:, None, None] * eye
    return cov, shrink


def partial_correlation(X: Tensor) -> Tensor:
    """P_ij = -Theta_ij / sqrt(Theta_ii Theta_jj), Theta the inverse of the
    Ledoit-Wolf covariance. Diagonal is -1 by this formula (A zeroes it)."""
    cov, _ = ledoit_wolf_covariance(X)
    theta = torch.linalg.inv(cov)
    dg = torch.sqrt(torch.diagonal(theta, dim1=1, dim2=2))  # [B, N]
    return -theta / (dg[:, :, None] * dg[:, None, :])


def static_adjacency(X: Tensor) -> Tensor:
    """Â = D^{-1/2} (A + I) D^{-1/2}, A = |P| with zero diagonal. [B, N, N]."""
    with torch.no_grad():
        P = partial_correlation(X.detach())
        N = P.shape[-1]
        eye = torch.eye(N, dtype=P.dtype, device=P.device)
        A = P.abs() * (1 - eye) + eye  # A + I
        dinv = A.sum(dim=2).rsqrt()  # row sums >= 1
        return dinv[:, :, None] * A * dinv[:, None, :]


# --------------------------------------------------------------------------
# 2. dynamic graphs
# --------------------------------------------------------------------------


def dynamic_adjacency(p: Params, cfg: Config, X: Tensor) -> Tensor:
    """A_w = softmax_row(ReLU(E_w E_w^T) / sqrt(d)), E_w = X_w W_e + E_node.
    Returns [B, W, N, N]."""
    L, S, W, d = cfg.window, cfg.stride, cfg.n_windows, cfg.embed_dim
    Xw = torch.stack([X[:, :, w * S : w * S + L] for w in range(W)], dim=1)  # [B, W, N, L]
    E = Xw @ p["dynamic.window_proj.weight"] + p["dynamic.node_embedding"]  # [B, W, N, d]
    logits = torch.relu(E @ E.transpose(-1, -2)) / math.sqrt(d)
    return torch.softmax(logits, dim=-1)


def frame_windows(cfg: Config) -> List[Tuple[int, int, int]]:
    """(window w, first frame, end frame) blocks: frame t uses window
    min(t // S, W - 1)."""
    S, W, T = cfg.stride, cfg.n_windows, cfg.crop
    out = []
    for w in range(W):
        t0 = w * S
        t1 = T if w == W - 1 else (w + 1) * S
        out.append((w, t0, t1))
    return out


# --------------------------------------------------------------------------
# 3. GCN
# --------------------------------------------------------------------------


def pearson_correlation(X: Tensor) -> Tensor:
    """Pearson correlation of each scan's N series over its T frames,
    [B, N, N]; a region without variance correlates 0 with every region,
    itself included (ops/correlation.rs)."""
    Xc = X - X.mean(dim=2, keepdim=True)
    ss = (Xc * Xc).sum(dim=2)  # [B, N]
    has = ss > 0
    inv = torch.where(has, ss.clamp_min(1e-300).rsqrt(), torch.zeros_like(ss))
    return (Xc @ Xc.transpose(1, 2)) * inv[:, :, None] * inv[:, None, :]


def node_profiles(cfg: Config, X: Tensor) -> Optional[Tensor]:
    """The GCN input of ``node_features``: None for the literal per-frame
    series, else each region's row of the crop's Pearson or partial
    correlation matrix (diagonal 1, as nilearn writes it), [B, N, N], no
    gradient."""
    if cfg.node_features == "series":
        return None
    with torch.no_grad():
        if cfg.node_features == "pearson":
            return pearson_correlation(X.detach())
        P = partial_correlation(X.detach())
        eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
        return P * (1 - eye) + eye


def gcn(p: Params, branch: str, X: Tensor, adj_apply, profiles: Optional[Tensor] = None) -> Tensor:
    """H0 = x * lift.weight[0] + lift.bias (or, with connectivity profiles
    R [B, N, N], H0 = R @ lift.weight + lift.bias at every frame);
    H <- ReLU(Â_t H W + b), twice, frame by frame.
    ``adj_apply(H)`` multiplies each frame's node features by that frame's
    adjacency: H [B, T, N, F] -> [B, T, N, F]. Returns H2 [B, T, N, F]."""
    if profiles is None:
        x = X.transpose(1, 2)[..., None]  # [B, T, N, 1]
        H = x * p[f"{branch}.lift.weight"][0] + p[f"{branch}.lift.bias"]
    else:
        B, N, T = X.shape
        H0 = profiles @ p[f"{branch}.lift.weight"] + p[f"{branch}.lift.bias"]  # [B, N, F]
        H = H0[:, None].expand(B, T, N, H0.shape[-1])
    for g in ("gcn1", "gcn2"):
        H = torch.relu(adj_apply(H) @ p[f"{branch}.{g}.weight"] + p[f"{branch}.{g}.bias"])
    return H


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------


def masked_softmax(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """softmax over ``dim`` restricted to mask == 1; entries outside the mask
    get weight 0; an all-masked row gives all zeros (no NaN)."""
    m = mask.to(torch.bool)
    with torch.no_grad():
        mx = x.masked_fill(~m, float("-inf")).amax(dim=dim, keepdim=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    ex = torch.exp(x - mx) * m.to(x.dtype)
    s = ex.sum(dim=dim, keepdim=True)
    return ex / torch.where(s > 0, s, torch.ones_like(s))


def layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return Fn.layer_norm(x, (x.shape[-1],), w, b, eps=LN_EPS)


def forward(p: Params, cfg: Config, X: Tensor, valid: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Encoder + head on one view. X [B, N, T]; valid [B, T] (1 real frame,
    0 padding) or None (all real). Returns every intermediate by name."""
    B, N, T = X.shape
    if N != cfg.n_regions or T != cfg.crop:
        raise ValueError(f"X is {tuple(X.shape)}, config has N={cfg.n_regions}, T={cfg.crop}")
    F, D, Q = cfg.node_channels, cfg.width, cfg.qk_dim
    out: Dict[str, Tensor] = {}

    # 1. static graph + GCN
    A_s = static_adjacency(X).to(X.dtype)
    out["A_static"] = A_s
    R = node_profiles(cfg, X)
    Z_s = gcn(p, "static", X, lambda H: torch.einsum("bnm,btmf->btnf", A_s, H), R)

    # 2. dynamic graphs + GCN (frames grouped by the window they use)
    A_d = dynamic_adjacency(p, cfg, X)
    out["A_dynamic"] = A_d
    S, W = cfg.stride, cfg.n_windows
    t_last = (W - 1) * S  # frames [wS, (w+1)S) use window w < W-1; frames t_last.. use window W-1

    def dyn_apply(H):
        Bh, _, Nh, Fh = H.shape
        last = torch.einsum("bnm,btmf->btnf", A_d[:, W - 1], H[:, t_last:])
        if W == 1:
            return last
        head = H[:, :t_last].reshape(Bh, W - 1, S, Nh, Fh)
        head = torch.einsum("bwnm,bwsmf->bwsnf", A_d[:, : W - 1], head).reshape(Bh, t_last, Nh, Fh)
        return torch.cat([head, last], dim=1)

    Z_d = gcn(p, "dynamic", X, dyn_apply, R)
    out["Z_s"], out["Z_d"] = Z_s, Z_d

    # 4. fusion
    beta = torch.softmax(-p["fusion.alpha"], dim=0)
    Z = beta[0] * Z_s + beta[1] * Z_d  # [B, T, N, F]
    out["beta"], out["Z_fused"] = beta, Z
    Zsp = Z.reshape(B, T, N * F) @ p["fusion.proj.weight"] + p["fusion.proj.bias"]  # [B, T, D]
    if cfg.norm == "layer":
        Zsp = layer_norm(Zsp, p["norm.fusion.weight"], p["norm.fusion.bias"])
    Zsp_t = Zsp.transpose(1, 2)  # [B, D, T]
    out["Z_spatial"] = Zsp_t

    # 5. calibration
    CCM = torch.softmax(Zsp @ Zsp_t / math.sqrt(D), dim=-1)  # [B, T, T]
    Qm = Fn.conv1d(Zsp_t, p["calib.q.weight"], p["calib.q.bias"], padding=1)  # [B, Q, T]
    Km = Fn.conv1d(Zsp_t, p["calib.k.weight"], p["calib.k.bias"], padding=1)
    TAW = torch.softmax(Qm.transpose(1, 2) @ Km / math.sqrt(Q), dim=-1)
    c, cb = p["calib.mix.weight"], p["calib.mix.bias"]
    CAM = torch.softmax(c[0] * CCM + c[1] * TAW + cb[0], dim=-1)
    V = Fn.conv1d(Zsp_t, p["calib.v.weight"], p["calib.v.bias"], padding=1)  # [B, D, T]
    O = V @ CAM.transpose(1, 2)  # O[:, :, t] = sum_s V[:, :, s] CAM[t, s]
    Zt = Fn.conv1d(O, p["calib.out.weight"], p["calib.out.bias"])
    if cfg.residual == "spatial":
        Zt = Zt + Zsp_t
    # residual == "input": no residual (the literal "+ X" is [B, N, T], not [B, D, T])
    out.update(CCM=CCM, TAW=TAW, CAM=CAM, Z_temporal=Zt)

    # 6. progressive aggregation
    P, K = cfg.segment, cfg.n_segments
    vmask = torch.ones(B, T, dtype=X.dtype, device=X.device) if valid is None else valid.to(X.dtype)
    h = Zt.transpose(1, 2)  # [B, T, D]
    pad = K * P - T
    if pad:
        h = torch.cat([h, h.new_zeros(B, pad, D)], dim=1)
        vmask = torch.cat([vmask, vmask.new_zeros(B, pad)], dim=1)
    hs = h.reshape(B, K, P, D)
    ms = vmask.reshape(B, K, P)
    e = torch.tanh(hs @ p["agg.w1"]) @ p["agg.v1"]  # [B, K, P]
    a = masked_softmax(e, ms, dim=-1)
    g = (a[..., None] * hs).sum(dim=2)  # [B, K, D]
    seg_valid = (ms.sum(dim=-1) > 0).to(X.dtype)  # a segment with no real frame is left out
    u = torch.tanh(g @ p["agg.w2"]) @ p["agg.v2"]  # [B, K]
    gamma = masked_softmax(u, seg_valid, dim=-1)
    Z_st = (gamma[..., None] * g).sum(dim=1)  # [B, D]
    if cfg.norm == "layer":
        Z_st = layer_norm(Z_st, p["norm.out.weight"], p["norm.out.bias"])
    out.update(seg_attn=a.reshape(B, K * P)[:, :T], seg_weights=gamma, Z_st=Z_st)

    # 7. head
    out["logits"] = Z_st @ p["head.weight"] + p["head.bias"]
    return out


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------


def standardize(z: Tensor) -> Tensor:
    """Per feature over samples: (z - mean) / sqrt(biased var + 1e-5)."""
    mu = z.mean(dim=0, keepdim=True)
    var = ((z - mu) ** 2).mean(dim=0, keepdim=True)
    return (z - mu) / torch.sqrt(var + BN_EPS)


def barlow_twins(z1: Tensor, z2: Tensor, lam: float = BT_LAMBDA) -> Tensor:
    """BT = sum_i (1 - C_ii)^2 + lam * sum_{i != j} C_ij^2, C = z~1^T z~2 / n."""
    n, f = z1.shape
    C = standardize(z1).T @ standardize(z2) / n
    eye = torch.eye(f, dtype=C.dtype, device=C.device)
    on = ((1 - torch.diagonal(C)) ** 2).sum()
    off = ((C * C) * (1 - eye)).sum()
    return on + lam * off


def projector(p: Params, z: Tensor) -> Tensor:
    """fc2(ReLU(BN(fc1(z)))), BatchNorm in training mode over the batch."""
    h = z @ p["proj.fc1.weight"] + p["proj.fc1.bias"]
    mu = h.mean(dim=0, keepdim=True)
    var = ((h - mu) ** 2).mean(dim=0, keepdim=True)
    h = (h - mu) / torch.sqrt(var + BN_EPS) * p["proj.bn.weight"] + p["proj.bn.bias"]
    return torch.relu(h) @ p["proj.fc2.weight"] + p["proj.fc2.bias"]


def loss_fgco_global(p: Params, cfg: Config, X: Tensor, X_S: Tensor, X_T: Tensor, valid: Optional[Tensor] = None, outs=None) -> Tensor:
    o = [forward(p, cfg, v, valid) for v in (X, X_S, X_T)]
    if outs is not None:
        outs.extend(o)
    z = [projector(p, oo["Z_st"]) for oo in o]
    return barlow_twins(z[0], z[1]) + barlow_twins(z[0], z[2])


def fine_region_embedding(o: Dict[str, Tensor]) -> Tensor:
    """R = mean_t(beta0 Z_s + beta1 Z_d) [B, N, F] -> [B*F, N]."""
    R = o["Z_fused"].mean(dim=1)  # [B, N, F]
    B, N, F = R.shape
    return R.permute(0, 2, 1).reshape(B * F, N)


def fine_frame_embedding(o: Dict[str, Tensor]) -> Tensor:
    """U = Z_temporal [B, D, T] -> [B*D, T]."""
    U = o["Z_temporal"]
    B, D, T = U.shape
    return U.reshape(B * D, T)


def loss_fgco_fine(p: Params, cfg: Config, X: Tensor, X_S: Tensor, X_T: Tensor, valid: Optional[Tensor] = None, outs=None) -> Tensor:
    o = [forward(p, cfg, v, valid) for v in (X, X_S, X_T)]
    if outs is not None:
        outs.extend(o)
    L_S = barlow_twins(fine_region_embedding(o[0]), fine_region_embedding(o[1]))
    L_T = barlow_twins(fine_frame_embedding(o[0]), fine_frame_embedding(o[2]))
    return L_S + L_T


def loss_finetune(p: Params, cfg: Config, X: Tensor, labels: Tensor, valid: Optional[Tensor] = None, outs=None) -> Tensor:
    o = forward(p, cfg, X, valid)
    if outs is not None:
        outs.append(o)
    return Fn.cross_entropy(o["logits"], labels.to(torch.long))


LOSSES = ("fgco_global", "fgco_fine", "finetune")


def compute_loss(kind: str, p: Params, cfg: Config, batch: Dict[str, Tensor], outs=None) -> Tensor:
    """batch: X [B,N,T], roi_mask [B,N], frame_mask [B,T], valid [B,T], labels [B]."""
    X = batch["X"]
    valid = batch.get("valid")
    if kind == "finetune":
        return loss_finetune(p, cfg, X, batch["labels"], valid, outs)
    X_S = X * batch["roi_mask"][:, :, None]
    X_T = X * batch["frame_mask"][:, None, :]
    if kind == "fgco_global":
        return loss_fgco_global(p, cfg, X, X_S, X_T, valid, outs)
    if kind == "fgco_fine":
        return loss_fgco_fine(p, cfg, X, X_S, X_T, valid, outs)
    raise ValueError(kind)


# --------------------------------------------------------------------------
# module wrapper
# --------------------------------------------------------------------------


class ReferenceModel(torch.nn.Module):
    """Holds the parameters under their documented names (registered with
    '.' replaced by '__', since nn.Module names cannot contain dots)."""

    def __init__(self, cfg: Config, seed: int = 0, dtype: torch.dtype = torch.float32, params: Optional[Params] = None):
        super().__init__()
        self.cfg = cfg
        self._names: List[str] = list(param_specs(cfg).keys())
        init = init_params(cfg, seed, dtype) if params is None else params
        check_params(cfg, init)
        for k in self._names:
            self.register_parameter(k.replace(".", "__"), torch.nn.Parameter(init[k].detach().clone().to(dtype)))

    def params_dict(self) -> "OrderedDict[str, Tensor]":
        return OrderedDict((k, getattr(self, k.replace(".", "__"))) for k in self._names)

    def save_params(self, path: str) -> None:
        save_tensors(path, self.params_dict(), torch.float32)

    def load_params(self, path: str) -> None:
        loaded = load_tensors(path)
        check_params(self.cfg, loaded)
        with torch.no_grad():
            for k, v in self.params_dict().items():
                v.copy_(loaded[k].to(v.dtype))

    def forward(self, X: Tensor, valid: Optional[Tensor] = None) -> Dict[str, Tensor]:  # type: ignore[override]
        return forward(self.params_dict(), self.cfg, X, valid)

    def loss(self, kind: str, batch: Dict[str, Tensor], outs=None) -> Tensor:
        return compute_loss(kind, self.params_dict(), self.cfg, batch, outs)


# Parameters that get no gradient in each loss (by construction of the graph).
def unused_params(cfg: Config, kind: str) -> List[str]:
    names = list(param_specs(cfg).keys())
    if kind == "fgco_global":
        return [k for k in names if k.startswith("head.")]
    if kind == "fgco_fine":
        return [k for k in names if k.startswith(("agg.", "proj.", "head.", "norm.out."))]
    if kind == "finetune":
        return [k for k in names if k.startswith("proj.")]
    raise ValueError(kind)
