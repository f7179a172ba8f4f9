"""Training losses: adaptive-margin batch-hard triplet loss and the depth-completion loss."""

from __future__ import annotations

import torch


def pair_masks(xy: torch.Tensor, group: torch.Tensor, pos_radius: float = 5.0, neg_radius: float = 10.0,
               heading_deg: torch.Tensor | None = None, max_heading_deg: float = 0.0):
    """(B, B) positive and negative masks from ground-plane positions.

    Positives lie within ``pos_radius`` in the same sequence (``group``) and, with
    ``max_heading_deg`` > 0, face within that many degrees of each other (``heading_deg`` (B,)):
    a forward camera facing the other way sees another scene; negatives lie beyond
    ``neg_radius`` or in another sequence; pairs in between are ignored.
    """
    d = torch.cdist(xy, xy)  # (B, B)
    same = group[:, None] == group[None, :]
    pos = same & (d <= pos_radius)
    if max_heading_deg > 0:
        pos = pos & (heading_gap_deg(heading_deg[:, None], heading_deg[None, :]) <= max_heading_deg)
    neg = ~same | (d > neg_radius)
    return pos, neg


def heading_gap_deg(a, b):
    """Absolute difference of headings in degrees, in [0, 180]: ``abs(retrieval.views.wrap_deg(a - b))``,
    written so that it also runs on tensors (on the training device) as well as numpy arrays."""
    return 180.0 - abs(abs(a - b) % 360.0 - 180.0)


def adaptive_triplet_loss(anchor: torch.Tensor, target: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                          margin_min: float = 0.1, margin_max: float = 0.6) -> tuple[torch.Tensor, dict]:
    """Batch-hard triplet loss with a margin taken from the batch's distance statistics.

    anchor (B, D), target (B, D): L2-normalised descriptors (e.g. image queries and LiDAR places
    of the same frames). For anchor i the hardest positive is the farthest target within
    ``pos[i]`` and the hardest negative the nearest within ``neg[i]`` (online mining in the batch).
    The margin is the batch's current separation, mean(d_neg) - mean(d_pos), clipped to
    [margin_min, margin_max] and not differentiated: small while the embedding is still mixed,
    growing as it separates.
    """
    d = torch.cdist(anchor, target)  # (B, B)
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return anchor.sum() * 0.0, {"margin": 0.0, "active": 0.0, "d_pos": 0.0, "d_neg": 0.0}
    big = torch.finfo(d.dtype).max / 4
    hardest_pos = torch.where(pos, d, torch.zeros_like(d)).amax(1)
    hardest_neg = torch.where(neg, d, torch.full_like(d, big)).amin(1)
    with torch.no_grad():
        mean_pos = d[pos].mean()
        mean_neg = d[neg].mean()
        margin = float((mean_neg - mean_pos).clamp(margin_min, margin_max))
    losses = torch.relu(hardest_pos - hardest_neg + margin)[valid]
    stats = {"margin": margin, "active": float((losses > 0).float().mean()), "d_pos": float(mean_pos), "d_neg": float(mean_neg)}
    return losses.mean(), stats


def completion_loss(dense: torch.Tensor, target: torch.Tensor, max_depth: float = 80.0) -> torch.Tensor:
    """L1 (in units of ``max_depth``) of the completed depth at LiDAR pixels hidden from the
    input. dense, target: (B, 1, H, W); target is 0 where nothing was hidden."""
    m = target > 0
    if not bool(m.any()):
        return dense.sum() * 0.0
    return (dense[m] - target[m]).abs().mean() / max_depth


def contrastive_loss(anchor: torch.Tensor, target: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                     temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive (InfoNCE) term over the batch: for anchor i, the softmax over its
    positives and negatives should put its mass on the positives.

    Used beside the triplet loss because batch-hard triplets alone collapse from a random start
    (every descriptor nearly the same, every distance ~0, loss stuck at the margin: seen here in
    the first training run); pushing against all negatives at once does not.
    """
    logits = anchor @ target.T / temperature  # (B, B)
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return anchor.sum() * 0.0
    considered = pos | neg
    neg_inf = torch.finfo(logits.dtype).min
    log_all = torch.logsumexp(torch.where(considered, logits, torch.full_like(logits, neg_inf)), dim=1)
    log_pos = torch.logsumexp(torch.where(pos, logits, torch.full_like(logits, neg_inf)), dim=1)
    return (log_all - log_pos)[valid].mean()


def coarse_depth_loss(pred: torch.Tensor, sparse: torch.Tensor, max_depth: float = 80.0) -> torch.Tensor:
    """L1 (units of ``max_depth``) between a coarse depth map predicted from the image (B, 1, h, w)
    and the mean LiDAR depth of the pixels falling in each of its cells (cells with none ignored)."""
    import torch.nn.functional as F

    mask = (sparse > 0).to(sparse.dtype)
    k = (sparse.shape[-2] // pred.shape[-2], sparse.shape[-1] // pred.shape[-1])
    total = F.avg_pool2d(sparse, k) * k[0] * k[1]
    count = F.avg_pool2d(mask, k) * k[0] * k[1]
    valid = count > 0
    if not bool(valid.any()):
        return pred.sum() * 0.0
    target = total[valid] / count[valid]
    return (pred[valid] - target).abs().mean() / max_depth
