from django import forms

from controlplane.names import validate_name


class InspectJobForm(forms.Form):
    upload_id = forms.IntegerField(widget=forms.HiddenInput)
    preview_records = forms.IntegerField(min_value=1, max_value=50, initial=5)
    read_rate_limit_mb_s = forms.FloatField(
        min_value=0.01, required=False, label="Read rate limit (MB/s)"
    )


class PipelineJobForm(forms.Form):
    pipeline = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 12, "class": "code"}),
        required=False,
        help_text="the engine's pipeline config as JSON: stages and their thresholds",
    )
    tokenizer = forms.ChoiceField(choices=[("char", "characters"), ("bpe", "byte-level BPE")])
    vocab_size = forms.IntegerField(
        min_value=260, max_value=65535, initial=4096, required=False, help_text="BPE only"
    )
    val_fraction = forms.FloatField(min_value=0.001, max_value=0.5, initial=0.05)

    def clean_pipeline(self):
        from controlplane.api.parsers import JSONTextError, loads_storable

        text = self.cleaned_data["pipeline"].strip()
        if not text:
            return {}
        try:
            # Not json.loads: NaN, NUL or deep nesting would reach jsonb (or the stack).
            value = loads_storable(text)
        except JSONTextError as error:
            raise forms.ValidationError(f"not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value

    def job_params(self, version_id: int) -> dict:
        data = self.cleaned_data
        tokenizer = {"kind": data["tokenizer"]}
        if data["tokenizer"] == "bpe":
            tokenizer["vocab_size"] = data["vocab_size"] or 4096
        return {
            "dataset_version_id": version_id,
            "pipeline": data["pipeline"],
            "tokenizer": tokenizer,
            "val_fraction": data["val_fraction"],
        }


PRESET_CHOICES = [
    ("tiny", "tiny: 2 layers, 64 wide, context 64 (seconds on a CPU)"),
    ("shakespeare-char", "shakespeare-char: 4 layers, 128 wide, context 64 (nanoGPT's CPU recipe)"),
    ("small", "small: 6 layers, 384 wide, context 256 (a GPU, or patience)"),
    ("gpt2-124m", "gpt2-124m: 12 layers, 768 wide, context 1024 (GPU)"),
]


class TrainJobForm(forms.Form):
    """Pre-training a GPT; blank fields take the preset's or the engine's default."""

    preset = forms.ChoiceField(choices=PRESET_CHOICES, initial="shakespeare-char")
    experiment = forms.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        required=False,
        validators=[validate_name],
        help_text="groups runs for comparison (letters, digits, . _ -)",
    )
    max_iters = forms.IntegerField(min_value=1, initial=2000, label="Steps")
    batch_size = forms.IntegerField(min_value=1, initial=12)
    block_size = forms.IntegerField(
        min_value=8, required=False, label="Context length", help_text="blank: the preset's"
    )
    lr = forms.FloatField(min_value=1e-7, max_value=1.0, initial=1e-3, label="Learning rate")
    min_lr = forms.FloatField(
        min_value=0.0, max_value=1.0, initial=1e-4, label="Final learning rate"
    )
    warmup_iters = forms.IntegerField(min_value=0, initial=100, label="Warmup steps")
    eval_interval = forms.IntegerField(min_value=0, initial=250)
    checkpoint_interval = forms.IntegerField(
        min_value=0, initial=250, help_text="0: only at the end"
    )
    device = forms.ChoiceField(choices=[("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")])
    sample_prompt = forms.CharField(max_length=500, initial="ROMEO:", required=False)

    def job_params(self, version_id: int) -> dict:
        data = self.cleaned_data
        model = {"block_size": data["block_size"]} if data["block_size"] else {}
        return {
            "dataset_version_id": version_id,
            "preset": data["preset"],
            "model": model,
            "train": {
                "max_iters": data["max_iters"],
                "batch_size": data["batch_size"],
                "eval_interval": data["eval_interval"],
            },
            "optim": {
                "lr": data["lr"],
                "min_lr": data["min_lr"],
                "warmup_iters": data["warmup_iters"],
            },
            "checkpoint_interval": data["checkpoint_interval"],
            "device": data["device"],
            "sample_prompts": [data["sample_prompt"] or "\n"],
        }


class ImageJobForm(forms.Form):
    """Train an image generator on the 8x8 digits; blank fields take the recipe's values."""

    kind = forms.ChoiceField(
        choices=[
            ("diffusion", "diffusion (DDPM/DDIM, guidance)"),
            ("gan", "GAN (conditional DCGAN)"),
            ("vae", "VAE"),
        ]
    )
    preset = forms.ChoiceField(
        choices=[
            ("recipe", "recipe (configs/vision, minutes on a CPU)"),
            ("tiny", "tiny (seconds: a first look)"),
        ]
    )
    experiment = forms.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100, required=False, validators=[validate_name]
    )
    steps = forms.IntegerField(min_value=1, required=False)
    batch_size = forms.IntegerField(min_value=1, required=False)
    lr = forms.FloatField(min_value=1e-7, max_value=1.0, required=False, label="Learning rate")
    sample_interval = forms.IntegerField(
        min_value=0, required=False, help_text="a grid every N steps"
    )
    eval_per_class = forms.IntegerField(
        min_value=0,
        max_value=1000,
        initial=0,
        required=False,
        help_text="samples per digit scored at the end (0: none)",
    )
    device = forms.ChoiceField(choices=[("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")])

    def job_params(self) -> dict:
        data = self.cleaned_data
        train = {
            k: data[k]
            for k in ("steps", "batch_size", "lr", "sample_interval")
            if data[k] is not None
        }
        return {
            "preset": data["preset"],
            "train": train,
            "device": data["device"],
            "eval_per_class": data["eval_per_class"] or 0,
        }


class PostTrainJobForm(forms.Form):
    """Post-train a job's model; blank fields take the kind's defaults (jobs/posttrain.py)."""

    kind = forms.ChoiceField(
        choices=[
            ("sft", "sft: supervised fine-tuning of all weights on prompt/response pairs"),
            ("lora", "lora: low-rank adapters on prompt/response pairs"),
            ("qlora", "qlora: adapters on a 4-bit (NF4) base"),
            ("dpo", "dpo: direct preference optimisation on prompt/chosen/rejected"),
            ("reward", "reward: a reward model on prompt/chosen/rejected"),
            ("ppo", "ppo: RLHF against a reward model"),
        ]
    )
    experiment = forms.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100, required=False, validators=[validate_name]
    )
    dataset_version = forms.TypedChoiceField(
        coerce=int, empty_value=None, required=False, help_text="JSON lines; blank: built-in pairs"
    )
    reward_job = forms.TypedChoiceField(
        coerce=int, empty_value=None, required=False, help_text="ppo only"
    )
    steps = forms.IntegerField(min_value=1, initial=200)
    batch_size = forms.IntegerField(min_value=1, initial=8)
    lr = forms.FloatField(
        min_value=1e-7,
        max_value=1.0,
        required=False,
        label="Learning rate",
        help_text="blank: the kind's",
    )
    lora_r = forms.IntegerField(
        min_value=1,
        max_value=256,
        required=False,
        label="LoRA rank",
        help_text="lora/qlora: blank = 8; reward/dpo/ppo: set it to train adapters only",
    )
    beta = forms.FloatField(min_value=0.0, initial=0.1, required=False, label="DPO beta")
    kl_coef = forms.FloatField(
        min_value=0.0, initial=0.05, required=False, label="PPO KL coefficient"
    )
    device = forms.ChoiceField(choices=[("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")])

    # The platform's field errors ("train.lr", "dpo.beta") on this form's fields.
    ERROR_FIELDS = {
        "dataset_version_id": "dataset_version",
        "reward_job_id": "reward_job",
        "train.steps": "steps",
        "train.batch_size": "batch_size",
        "train.lr": "lr",
        "lora": "lora_r",
        "lora.r": "lora_r",
        "dpo.beta": "beta",
        "ppo.kl_coef": "kl_coef",
        "device": "device",
    }

    def __init__(self, *args, versions=(), reward_jobs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].choices = [("", "built-in Shakespeare pairs")] + [
            (v.pk, f"{v.dataset.slug} v{v.number}") for v in versions
        ]
        self.fields["reward_job"].choices = [("", "—")] + [
            (job.pk, f"job {job.pk}" + (f" ({job.experiment})" if job.experiment else ""))
            for job in reward_jobs
        ]

    def job_params(self, base_job_id: int) -> dict:
        data = self.cleaned_data
        kind = data["kind"]
        train = {"steps": data["steps"], "batch_size": data["batch_size"]}
        if data["lr"] is not None:
            train["lr"] = data["lr"]
        params = {"base_job_id": base_job_id, "train": train, "device": data["device"]}
        if data["dataset_version"] is not None:
            params["dataset_version_id"] = data["dataset_version"]
        if data["reward_job"] is not None:
            params["reward_job_id"] = data["reward_job"]
        if data["lora_r"] is not None:
            params["lora"] = {"r": data["lora_r"]}
        # beta and kl_coef show their defaults for every kind; they count for their own.
        if kind == "dpo" and data["beta"] is not None:
            params["dpo"] = {"beta": data["beta"]}
        if kind == "ppo" and data["kl_coef"] is not None:
            params["ppo"] = {"kl_coef": data["kl_coef"]}
        return params

    def add_job_errors(self, errors: dict[str, list[str]]) -> None:
        for field, problems in errors.items():
            name = self.ERROR_FIELDS.get(field)
            for problem in problems:
                if name:
                    self.add_error(name, problem)
                else:
                    self.add_error(None, f"{field}: {problem}")
