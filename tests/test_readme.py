"""The README's usage example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_readme_has_both_setup_commands():
    text = README.read_text()
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert marker in text
    assert "accelerate launch examples/pretrain.py" in text


def test_main_command_installs_what_the_main_job_reports_to():
    import tomllib

    from script_loading import ROOT, load_script

    command = re.search(r"<!-- main-command -->\n```bash\n(.*?)\n```", README.read_text()).group(1)
    extras = re.search(r'pip install -e "\.\[([\w,]+)\]"', command).group(1).split(",")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in installed}
    pretrain = load_script("examples/pretrain.py", "pretrain_for_readme")
    for integration in pretrain.DEFAULTS["report_to"]:  # transformers' integration name = its package name here
        assert integration in names, f"the main command does not install {integration!r}, which the main job reports to"
