"""One intra-op thread: the machine's two cores are shared, and tiny models only lose from more."""

import torch

torch.set_num_threads(1)
