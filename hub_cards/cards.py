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


def _family(config) -> str:
    return type(config).__name__.replace("Config", "")


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
    intended_use: str = DEFAULT_INTENDED_USE,
    widget: list[dict] | None = None,
) -> ModelCard:
    """A filled model card for a CosMo model (metadata built by ModelCardData, body by the family template)."""
    from cosmo_vl.modeling import trainable_parameters

    config = model.config
    model_name = repo_id.split("/")[-1]
    results = eval_results_from_json(eval_results or {}, model_name, dataset_name, dataset_type)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        tags=["cosmo-vl", "cosmo", "vision-language", "image-text-to-text", "multimodal"],
        base_model=base_models or None,
        datasets=datasets or None,
        model_name=model_name,
        eval_results=results or None,
        widget=widget or None,
    )
    trainable, total, fraction = trainable_parameters(model)
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "cosmo.md"),
        model_name=model_name,
        repo_id=repo_id,
        vision_family=_family(config.vision_config),
        text_family=_family(config.text_config),
        num_latents=config.num_latents,
        unimodal_depth=config.unimodal_depth,
        num_layers=config.text_config.num_hidden_layers,
        interval=config.cross_attention_interval,
        trainable=f"{trainable:,}",
        total=f"{total:,}",
        trainable_pct=f"{100 * fraction:.1f}",
        hyperparameters=hyperparameters or {},
        datasets_description=", ".join(datasets or []),
        results=results,
        intended_use=intended_use,
    )
