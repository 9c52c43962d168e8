"""Model cards filled from `huggingface_hub.ModelCardData` (metadata) and a Jinja template per family."""

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATES = Path(__file__).parent / "templates"

# (task type, metric type, human-readable task) per key of eval_results.json
METRICS = {
    "zero_shot_top1": ("zero-shot-image-classification", "accuracy", "Zero-shot classification"),
    "i2t_r1": ("image-text-retrieval", "recall@1", "Image to text retrieval"),
    "i2t_r5": ("image-text-retrieval", "recall@5", "Image to text retrieval"),
    "t2i_r1": ("image-text-retrieval", "recall@1", "Text to image retrieval"),
    "t2i_r5": ("image-text-retrieval", "recall@5", "Text to image retrieval"),
    "cider": ("image-text-to-text", "cider", "Captioning"),
    "bleu4": ("image-text-to-text", "bleu", "Captioning"),
    "exact_match": ("image-text-to-text", "exact_match", "Captioning"),
    "vqa_accuracy": ("visual-question-answering", "accuracy", "VQA"),
}

DEFAULT_INTENDED_USE = (
    "Research on vision-language pretraining: captioning, visual question answering, few-shot interleaved "
    "prompting, image-text retrieval and zero-shot classification. The model inherits the biases of its towers "
    "and training data; it is not evaluated for safety-critical or surveillance uses."
)


def eval_results_from_json(results: dict, model_name: str, dataset_name: str, dataset_type: str) -> list[EvalResult]:
    """`model-index` entries from an eval_results.json mapping (unknown keys are ignored)."""
    out = []
    for key, value in results.items():
        if key not in METRICS or not isinstance(value, (int, float)):
            continue
        task_type, metric_type, task_name = METRICS[key]
        out.append(
            EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                metric_type=metric_type, metric_name=key, metric_value=float(value),
            )
        )
    return out


GENERATIVE_INTENDED_USE = (
    "Research on vision-language pretraining: captioning and visual question answering (no contrastive head, so "
    "no retrieval or zero-shot classification). The model inherits the biases of its towers and training data; it "
    "is not evaluated for safety-critical or surveillance uses."
)


def _family(config) -> str:
    return type(config).__name__.replace("Config", "")


def _architecture(config) -> tuple[str, list[str], dict]:
    """(template file, tags, architecture-specific template fields) of a CosMo, SimVLG or BLIP-2 config."""
    common = ["cosmo-vl", "vision-language", "image-text-to-text", "multimodal"]
    if config.model_type == "simvlg":
        return "simvlg.md", common[:1] + ["simvlg", "token-merging"] + common[1:], {
            "connector_layers": config.connector_num_layers,
            "merge_r": config.connector_merge_schedule,
        }
    if config.model_type == "blip-2":
        return "blip2.md", common[:1] + ["blip-2"] + common[1:], {
            "qformer_layers": config.qformer_config.num_hidden_layers,
            "num_query_tokens": config.num_query_tokens,
        }
    return "cosmo.md", common[:1] + ["cosmo"] + common[1:], {
        "num_latents": config.num_latents,
        "unimodal_depth": config.unimodal_depth,
        "num_layers": config.text_config.num_hidden_layers,
        "interval": config.cross_attention_interval,
    }


def build_model_card(
    model,
    repo_id: str,
    eval_results: dict | None = None,
    dataset_name: str = "shapes-captions",
    dataset_type: str = "cosmo-vl/embedded",
    base_models: list[str] | None = None,
    datasets: list[str] | None = None,
    hyperparameters: dict | None = None,
    license: str = "apache-2.0",
    intended_use: str | None = None,
    widget: list[dict] | None = None,
) -> ModelCard:
    """A filled model card for a CosMo, SimVLG or BLIP-2 model (metadata built by ModelCardData, body by the
    architecture's template)."""
    from cosmo_vl.modeling import trainable_parameters

    model_name = repo_id.split("/")[-1]
    template, tags, fields = _architecture(model.config)
    results = eval_results_from_json(eval_results or {}, model_name, dataset_name, dataset_type)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        tags=tags,
        base_model=base_models or None,
        datasets=datasets or None,
        model_name=model_name,
        eval_results=results or None,
        widget=widget or None,
    )
    trainable, total, fraction = trainable_parameters(model)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / template),
        model_name=model_name,
        repo_id=repo_id,
        vision_family=_family(model.config.vision_config),
        text_family=_family(model.config.text_config),
        **fields,
        trainable=f"{trainable:,}",
        total=f"{total:,}",
        trainable_pct=f"{100 * fraction:.1f}",
        hyperparameters=hyperparameters or {},
        datasets_description=", ".join(datasets or []),
        results=results,
        intended_use=intended_use or (DEFAULT_INTENDED_USE if template == "cosmo.md" else GENERATIVE_INTENDED_USE),
    )
