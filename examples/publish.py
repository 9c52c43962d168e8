"""Stage a saved CosMo folder for the Hub (remote code, model card) and, when asked, upload it.

    python examples/publish.py --model outputs/cosmo-tiny/final --repo_id my-org/cosmo-tiny-shapes   # dry run
    python examples/publish.py --model outputs/cosmo-tiny/final --repo_id my-org/cosmo-tiny-shapes --no-dry_run --private

The staged folder (`--output_dir`, default MODEL/publish) is exactly what gets uploaded: the safetensors weights,
config.json with an `auto_map` for every Auto class of the architecture, the modeling / configuration / processing
.py files (so `trust_remote_code=True` works without cosmo-vl installed), the processor and tokenizer files,
`eval_results.json` when the model folder has one (see examples/evaluate.py) and a README.md model card whose
model-index is filled from it. Authentication is huggingface_hub's own (`hf auth login` or HF_TOKEN).
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from huggingface_hub import create_repo, upload_folder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Saved model folder (save_pretrained of model + processor).")
    p.add_argument("--repo_id", required=True, help="Target repository, e.g. my-org/cosmo-tiny-shapes.")
    p.add_argument("--dry_run", action=argparse.BooleanOptionalAction, default=True,
                   help="Only stage the folder and list it (default); --no-dry_run uploads it.")
    p.add_argument("--private", action="store_true", help="Create the repository as private.")
    p.add_argument("--output_dir", default=None, help="Staging folder (default: MODEL/publish).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing, non-empty staging folder.")
    p.add_argument("--dataset_name", default=None,
                   help="Dataset named in the model-index (default: eval_results.json's `dataset`, "
                        "else shapes-captions).")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--commit_message", default="Upload CosMo model")
    args = p.parse_args(argv)
    if "/" not in args.repo_id:
        p.error("--repo_id must be namespaced: org/name or user/name")
    return args


def load_folder(path):
    """(model, processor) of a saved folder, with the package's own classes."""
    import cosmo_vl  # noqa: F401 - registers the family with the Auto classes
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=False)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    return model, processor


def read_eval_results(folder: Path) -> dict | None:
    path = folder / "eval_results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _prepare_output(output_dir: Path, model_dir: Path, overwrite: bool) -> None:
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError("--output_dir must differ from --model")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def stage(model_dir, repo_id: str, output_dir=None, overwrite: bool = False, dataset_name: str | None = None,
          license: str = "apache-2.0") -> Path:
    """Write the folder that would be uploaded to `output_dir` and return it."""
    import cosmo_vl
    from cosmo_vl.hub_cards import build_model_card

    model_dir = Path(model_dir)
    output_dir = Path(output_dir) if output_dir else model_dir / "publish"
    _prepare_output(output_dir, model_dir, overwrite)
    model, processor = load_folder(model_dir)
    results = read_eval_results(model_dir)
    cosmo_vl.enable_remote_code(model, processor)
    try:
        model.save_pretrained(output_dir, safe_serialization=True)
        processor.save_pretrained(output_dir)
    finally:  # registration is class-level: leave later saves in this process untouched
        for obj in (model, model.config, processor):
            type(obj)._auto_class = None
    if dataset_name is None:
        dataset_name = (results or {}).get("dataset") if isinstance((results or {}).get("dataset"), str) else None
        dataset_name = dataset_name or "shapes-captions"
    card = build_model_card(model, repo_id, eval_results=results, dataset_name=dataset_name,
                            datasets=[dataset_name] if results else None, license=license)
    card.save(output_dir / "README.md")
    if results is not None:
        (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    return output_dir


def list_files(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def upload(folder: Path, repo_id: str, private: bool, commit_message: str) -> str:
    """Create the repository if needed and upload `folder` as is; returns the commit URL."""
    create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = stage(args.model, args.repo_id, args.output_dir, args.overwrite, args.dataset_name, args.license)
    files = list_files(folder)
    width = max(len(name) for name, _ in files)
    print(f"{'Dry run: ' if args.dry_run else ''}{len(files)} files staged in {folder} for {args.repo_id}")
    for name, size in files:
        print(f"  {name:<{width}}  {_human(size):>10}")
    print(f"  {'total':<{width}}  {_human(sum(s for _, s in files)):>10}")
    if args.dry_run:
        print("Nothing uploaded; pass --no-dry_run to upload this folder.")
        return 0
    url = upload(folder, args.repo_id, args.private, args.commit_message)
    print(f"Uploaded to https://huggingface.co/{args.repo_id} ({url})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
