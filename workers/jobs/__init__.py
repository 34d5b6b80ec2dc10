"""Job handlers by kind: each takes a JobContext and returns the job's result dict.

Handlers import the engine (and so torch) lazily, inside the handler: a worker pays for
what it runs, and the platform, which imports workers.protocol, never pulls the engine in.
"""

from workers.jobs.data_pipeline import run_data_pipeline
from workers.jobs.erasure import run_erasure
from workers.jobs.evaluate import run_evaluate
from workers.jobs.finetune import run_finetune
from workers.jobs.images import run_image_training
from workers.jobs.inspect import inspect_upload
from workers.jobs.pretrain import run_pretrain
from workers.protocol import JobKind

HANDLERS = {
    JobKind.INSPECT: inspect_upload,
    JobKind.DATA_PIPELINE: run_data_pipeline,
    JobKind.PRETRAIN: run_pretrain,
    JobKind.DIFFUSION: run_image_training,
    JobKind.GAN: run_image_training,
    JobKind.VAE: run_image_training,
    JobKind.SFT: run_finetune,
    JobKind.LORA: run_finetune,
    JobKind.QLORA: run_finetune,
    JobKind.REWARD: run_finetune,
    JobKind.DPO: run_finetune,
    JobKind.PPO: run_finetune,
    JobKind.EVALUATE: run_evaluate,
    JobKind.ERASURE: run_erasure,
}
