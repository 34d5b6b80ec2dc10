"""The warm-up rule the three training loops share: it never outlasts a tenth of the run.

    warmup = warmup_for(config.train.warmup_steps, config.train.steps)

A recipe's warm-up is written for its full length (nanoGPT's 100 of 2000 steps, the digits
diffusion's 200 of 2000). A shorter run of the same recipe (a demo, a first try, a test)
would otherwise end while the learning rate is still climbing, and its samples look as if
the model cannot learn.
"""

from __future__ import annotations

# The usual warm-up is a few percent of the run (Goyal et al. 2017: 5 epochs of 90).
MAX_WARMUP_SHARE = 0.1


def warmup_for(warmup_steps: int, total_steps: int) -> int:
    """``warmup_steps``, or a tenth of ``total_steps`` if that is shorter."""
    return min(warmup_steps, int(total_steps * MAX_WARMUP_SHARE))
