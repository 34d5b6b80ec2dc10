"""The training-loop kit: the pieces every engine loop shares, and nothing of any one loop.

- ``engine.loop.device``: device and dtype from a config's ``"auto" | "cpu" | "cuda"``;
- ``engine.loop.callbacks``: the one callback protocol (``on_metrics``, ``on_checkpoint``,
  ``should_stop`` ...) through which a caller (the CLI, a worker, a test) follows a run;
- ``engine.loop.metrics``: ``metrics.jsonl`` written as a callback, and the logging window
  that averages per-step figures;
- ``engine.loop.checkpoints``: where a run's checkpoints live, how they are named, found,
  pruned and written atomically; ``StepFiles`` for runs that fit one file per step;
- ``engine.loop.schedule``: the warm-up rule (never more than a tenth of the run).

The three loops built on it: ``engine.train.trainer.Trainer`` (pre-training),
``engine.vision.train.train`` (image generators), ``engine.finetune.run.run`` (post-training).
"""
