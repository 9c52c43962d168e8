"""transformers' own generic test mixins, for the installed transformers version.

The mixins are not part of the transformers wheel. `tests/*.py` (ModelTesterMixin, ConfigTester,
ProcessorTesterMixin, PipelineTesterMixin) ships in the source distribution on the package registry: it is
downloaded once per version into a cache. `tests/generation/`, `tests/exporters/` and `tests/utils/`
(GenerationTesterMixin, the export mixin and the common config kwargs that test_modeling_common imports) exist
only in the transformers repository: they are taken from a checkout named by `TRANSFORMERS_REPO` (a clone or a
bare git directory; the tag `v<version>` when it has one). Without one, empty stand-ins let the other mixins import,
and the generation and export suites skip saying what is missing. Nothing of transformers' tests is kept here.
"""

import ast
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch
import transformers

VERSION = transformers.__version__
CACHE = Path(os.environ.get("COSMO_VL_TRANSFORMERS_TESTS", Path.home() / ".cache" / "cosmo_vl" / "transformers-tests")) / VERSION
TREE = CACHE / "tests"
# Files of the repository-only folders that the mixins import.
REPO_FILES = (
    "tests/generation/__init__.py",
    "tests/generation/test_utils.py",
    "tests/exporters/__init__.py",
    "tests/exporters/test_export.py",
    "tests/utils/__init__.py",
    "tests/utils/test_configuration_utils.py",
)


def _download_sdist_tests() -> str | None:
    """Unpack `tests/*.py` of the transformers sdist into the cache; returns why not, or None."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"transformers=={VERSION}", "-d", tmp]
        # Without build isolation pip reads the sdist's metadata with the installed setuptools (fast, offline-safe);
        # where that fails, the isolated build is the fallback.
        done = subprocess.run(cmd + ["--no-build-isolation"], capture_output=True, text=True)
        if done.returncode:
            done = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("transformers-*.tar.gz"))
        if not archives:
            return f"`pip download` of the transformers {VERSION} sdist failed: {done.stderr.strip()[-300:]}"
        staging = Path(tmp) / "tests"
        staging.mkdir()
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (staging / parts[2]).write_bytes(tar.extractfile(member).read())
        (staging / "__init__.py").touch()
        TREE.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(TREE, ignore_errors=True)
        shutil.copytree(staging, TREE)
    return None


def _git_dir(repo: Path) -> Path | None:
    if (repo / ".git").exists():
        return repo / ".git"
    return repo if (repo / "HEAD").exists() and (repo / "objects").exists() else None


def _copy_repository_files() -> str | None:
    """Copy the repository-only test files from `TRANSFORMERS_REPO`; returns why not, or None."""
    repo = os.environ.get("TRANSFORMERS_REPO")
    if not repo:
        return "set TRANSFORMERS_REPO to a transformers checkout for GenerationTesterMixin and the export tests"
    repo = Path(repo)
    git_dir = _git_dir(repo)
    for name in REPO_FILES:
        target = TREE.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if git_dir is None:
            source = repo / name
            if not source.exists():
                return f"{source} is missing"
            data = source.read_bytes()
            target.write_bytes(_config_kwargs_only(data) if name.endswith("test_configuration_utils.py") else data)
            continue
        ref = f"v{VERSION}"
        has_tag = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "-q", "--verify", ref],
                                 capture_output=True).returncode == 0
        shown = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{ref if has_tag else 'HEAD'}:{name}"],
                               capture_output=True)
        if shown.returncode:
            return f"{name} is not in {repo}"
        target.write_bytes(_config_kwargs_only(shown.stdout) if name.endswith("test_configuration_utils.py")
                           else shown.stdout)
    return None


def _config_kwargs_only(source: bytes) -> bytes:
    """Of the repository's test_configuration_utils, only the `config_common_kwargs` literal is needed (the module
    itself imports fixtures from outside `tests/`)."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "config_common_kwargs":
            return f"config_common_kwargs = {ast.literal_eval(node.value)!r}\n".encode()
    raise ValueError("config_common_kwargs not found in the repository's tests/utils/test_configuration_utils.py")


# Written only when no checkout is given: they make `test_modeling_common` importable, and run nothing.
STAND_INS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n\n\nclass GenerationIntegrationTestsMixin:\n    pass\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n\n\nclass ExportGenerateTesterMixin:\n    pass\n",
    # PreTrainedConfig kwargs set to non-default values (ConfigTester checks each is stored).
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {'return_dict': False, 'output_hidden_states': True, 'output_attentions': True, "
        "'dtype': 'float16', 'chunk_size_feed_forward': 3, 'architectures': ['CosmoModel'], "
        "'id2label': {0: 'a'}, 'label2id': {'a': '0'}, 'problem_type': 'regression'}\n"
    ),
}
MARKER = ".stand_ins"


def load_tree() -> bool:
    """Put transformers' `tests` package of the installed version on `sys.path` (skips the calling module when the
    sdist cannot be had). Returns True when the repository-only mixins are real, False for the stand-ins."""
    if not (TREE / "test_modeling_common.py").exists():
        why = _download_sdist_tests()
        if why:
            pytest.skip(why, allow_module_level=True)
    real = (TREE / "generation" / "test_utils.py").exists() and not (TREE / MARKER).exists()
    if not real and os.environ.get("TRANSFORMERS_REPO"):
        why = _copy_repository_files()
        real = why is None
        if real:
            (TREE / MARKER).unlink(missing_ok=True)
        else:
            print(f"transformers' repository-only mixins unavailable: {why}", file=sys.stderr)
    if not real:
        for name, text in STAND_INS.items():
            (TREE / name).parent.mkdir(parents=True, exist_ok=True)
            (TREE / name).write_text(text)
            (TREE / name).parent.joinpath("__init__.py").touch()
        (TREE / MARKER).touch()
    summary = TREE / "utils" / "tiny_model_summary.json"
    if not summary.exists():
        # The list of transformers' tiny Hub checkpoints: ours are not on it (pipeline tests of a model missing
        # from it skip, as they do in transformers for any model without a tiny checkpoint).
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text("{}")
    source = TREE.parent / "src" / "transformers"
    if not source.exists():
        # test_pipeline_mixin imports transformers from the repository layout (`src/transformers`).
        source.parent.mkdir(parents=True, exist_ok=True)
        source.symlink_to(Path(transformers.__file__).parent, target_is_directory=True)
    root = str(TREE.parent)
    if root not in sys.path:
        sys.path.append(root)  # after our own folders: `tests` resolves to this regular package
    return real


def require_repository_mixins(real: bool) -> None:
    if not real:
        pytest.skip("transformers' GenerationTesterMixin / export tests live only in its repository: "
                    "set TRANSFORMERS_REPO to a transformers checkout to run them", allow_module_level=True)


def stale_mixin_patches() -> list:
    """Patches for the lines of repository mixins that a newer or older repository checkout has and the installed
    release does not: `PreTrainedModel._is_stateful` (gone in 5.24, read with its old default False) and
    `ExportedModel.module()` (5.25's exporters wrap the program: `.program.module()`). Start them in setUpClass."""
    from unittest import mock

    from transformers import PreTrainedModel

    patches = [mock.patch.object(PreTrainedModel, "_is_stateful", False, create=True)]
    try:
        from transformers.exporters.base import ExportedModel
    except ImportError:  # releases before the exporters package
        return patches
    if not hasattr(ExportedModel, "module"):
        patches.append(mock.patch.object(ExportedModel, "module", lambda self: self.program.module(), create=True))
    return patches


def start_class_patches(cls, patches) -> None:
    """Start `patches` for the duration of a test class (call from setUpClass)."""
    for patch in patches:
        patch.start()
        cls.addClassCleanup(patch.stop)


class TinyVlmTester:
    """What the CosMo and SimVLG testers share: a tiny CLIP vision tower, a tiny Llama LM, one image per sample and
    `num_placeholders` `<visual>` tokens from position 1 of each prompt. Subclasses give `get_config`."""

    num_placeholders = 1

    def __init__(self, parent, batch_size=3, text_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = text_length
        self.is_training = is_training
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.media_token_id = 3
        self.endofchunk_token_id = 4
        self.pad_token_id = 0
        self.image_size = 8
        self.num_channels = 3
        self.text_config = {
            "model_type": "llama", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": 37, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "pad_token_id": self.pad_token_id, "bos_token_id": 1,
            "eos_token_id": 2, "tie_word_embeddings": False,
        }
        self.vision_config = {
            "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": self.image_size, "patch_size": 4, "num_channels": 3,
        }

    def prepare_config_and_inputs_for_common(self):
        from tests.test_modeling_common import floats_tensor, ids_tensor  # the tree `load_tree` put on sys.path

        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 5) + 5
        input_ids[:, 1 : 1 + self.num_placeholders] = self.media_token_id
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                        "pixel_values": pixel_values}
