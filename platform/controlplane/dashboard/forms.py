"""The dashboard's forms. The job forms take their choices, defaults and ranges from the
job kinds' param schemas (controlplane/jobs/params.py, generated from the engine's
configs), so a form offers exactly what the API accepts."""

from typing import Any

from django import forms

from controlplane.jobs.forms import JSONObjectField
from controlplane.jobs.params import param_leaf
from controlplane.names import validate_name


def schema_field(kind: str, dotted: str, *, required: bool = True, **options: Any) -> forms.Field:
    """A form field for one job parameter: its type, range, default and help from the
    kind's schema; ``options`` (a label, a help text) win."""
    leaf = param_leaf(kind, dotted)
    options.setdefault("help_text", leaf.get("description", ""))
    if "enum" in leaf:
        helps = leaf.get("x-choices-help", {})
        choices = [(c, f"{c}: {helps[c]}" if c in helps else c) for c in leaf["enum"]]
        return forms.ChoiceField(
            choices=choices, initial=leaf.get("default"), required=required, **options
        )
    field_class = forms.IntegerField if leaf["type"] == "integer" else forms.FloatField
    # Django's bounds are inclusive; an exclusive one's edge is refused by the platform's
    # check, whose message the view puts on this field.
    return field_class(
        min_value=leaf.get("minimum", leaf.get("exclusiveMinimum")),
        max_value=leaf.get("maximum", leaf.get("exclusiveMaximum")),
        initial=leaf.get("default"),
        required=required,
        **options,
    )


class InspectJobForm(forms.Form):
    upload_id = forms.IntegerField(widget=forms.HiddenInput)
    preview_records = schema_field("inspect", "preview_records")
    read_rate_limit_mb_s = schema_field(
        "inspect", "read_rate_limit_mb_s", required=False, label="Read rate limit (MB/s)"
    )


class PipelineJobForm(forms.Form):
    pipeline = JSONObjectField(
        widget=forms.Textarea(attrs={"rows": 12, "class": "code"}),
        required=False,
        help_text="the engine's pipeline config as JSON: stages and their thresholds",
    )
    tokenizer = schema_field("data_pipeline", "tokenizer.kind", help_text="")
    vocab_size = schema_field("data_pipeline", "tokenizer.vocab_size", required=False)
    val_fraction = schema_field("data_pipeline", "val_fraction")

    def job_params(self, version_id: int) -> dict:
        data = self.cleaned_data
        tokenizer = {"kind": data["tokenizer"]}
        if data["tokenizer"] == "bpe" and data["vocab_size"] is not None:
            tokenizer["vocab_size"] = data["vocab_size"]  # blank: the engine's default
        return {
            "dataset_version_id": version_id,
            "pipeline": data["pipeline"] or {},
            "tokenizer": tokenizer,
            "val_fraction": data["val_fraction"],
        }


class TrainJobForm(forms.Form):
    """Pre-training a GPT; blank fields take the preset's or the engine's default."""

    preset = schema_field("pretrain", "preset")
    experiment = forms.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        required=False,
        validators=[validate_name],
        help_text="groups runs for comparison (letters, digits, . _ -)",
    )
    max_iters = schema_field("pretrain", "train.max_iters", label="Steps")
    batch_size = schema_field("pretrain", "train.batch_size")
    block_size = schema_field(
        "pretrain",
        "model.block_size",
        required=False,
        label="Context length",
        help_text="blank: the preset's",
    )
    lr = schema_field("pretrain", "optim.lr", label="Learning rate")
    min_lr = schema_field("pretrain", "optim.min_lr", label="Final learning rate")
    warmup_iters = schema_field("pretrain", "optim.warmup_iters", label="Warmup steps")
    eval_interval = schema_field("pretrain", "train.eval_interval")
    checkpoint_interval = schema_field("pretrain", "checkpoint_interval")
    device = schema_field("pretrain", "device")
    # Several processes train data-parallel under torchrun (engine/train/resources.py):
    # GPUs on a gpu worker; blank: one process on one machine.
    devices = schema_field("pretrain", "resources.devices", required=False, label="Devices")
    nodes = schema_field("pretrain", "resources.nodes", required=False, label="Machines")
    strategy = schema_field("pretrain", "resources.strategy", required=False)
    sample_prompt = forms.CharField(
        max_length=param_leaf("pretrain", "sample_prompts")["items"]["maxLength"],
        initial="ROMEO:",
        required=False,
        help_text="blank: the engine's default prompt",
    )

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
            "sample_prompts": [data["sample_prompt"]] if data["sample_prompt"] else None,
            "resources": {
                name: data[name]
                for name in ("devices", "nodes", "strategy")
                if data.get(name) not in (None, "")
            },
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
    steps = schema_field("sft", "train.steps")
    batch_size = schema_field("sft", "train.batch_size")
    # No initial value: the default depends on the kind and on adapters (the schema's).
    lr = schema_field(
        "sft", "train.lr", required=False, label="Learning rate", help_text="blank: the kind's"
    )
    lora_r = schema_field(
        "lora",
        "lora.r",
        required=False,
        label="LoRA rank",
        help_text="lora/qlora: blank = the default; reward/dpo/ppo: set it to train adapters only",
    )
    lora_r.initial = None  # set, it turns adapters on for reward/dpo/ppo
    beta = schema_field("dpo", "dpo.beta", required=False, label="DPO beta")
    kl_coef = schema_field("ppo", "ppo.kl_coef", required=False, label="PPO KL coefficient")
    device = schema_field("sft", "device")

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
