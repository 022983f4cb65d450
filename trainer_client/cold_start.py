"""Scoring items that training never saw, from their served vectors.

A trained item row starts as the item's served vector and drifts; the drift of the seen
items tells how the backbone's space relates to the served one. ``map_unseen_rows`` fits
that relation as a ridge regression (with an intercept) from served vectors to trained rows
of the seen items, and applies it to the unseen ones: an unseen item lands where a seen item
with the same served vector would be. With enough seen items this is a (D+1)×(D+1) solve,
cheap enough to redo at every evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

# Ridge strength relative to the mean diagonal of the Gram matrix: small enough to be
# exact when the relation is linear, large enough to keep the solve well posed.
RELATIVE_RIDGE = 1e-3


def seen_items(train_items: np.ndarray, n_items: int) -> np.ndarray:
    """``(n_items,)`` mask of the items that occur in the training sequences."""
    return np.bincount(np.asarray(train_items, dtype=np.int64), minlength=n_items)[:n_items] > 0


@torch.no_grad()
def map_unseen_rows(
    served: torch.Tensor, trained: torch.Tensor, unseen: torch.Tensor
) -> torch.Tensor:
    """``trained`` with the rows of ``unseen`` items replaced by ``[served, 1] @ B``, where
    ``B`` minimizes ``||[S_seen, 1] B − T_seen||² + α||B||²`` over the seen items."""
    unseen = unseen.to(trained.device)
    if not bool(unseen.any()):
        return trained
    served = served.to(trained.device, torch.float64)
    design = torch.cat([served, served.new_ones(len(served), 1)], dim=1)
    seen = ~unseen
    known, targets = design[seen], trained.detach()[seen].double()
    gram = known.T @ known
    ridge = RELATIVE_RIDGE * float(gram.diagonal().mean())
    coefficients = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype,
                                                               device=gram.device),
                                      known.T @ targets)
    out = trained.clone()
    out[unseen] = (design[unseen] @ coefficients).to(trained.dtype)
    return out
