"""The README's "Your own pilot" steps, run as written on a pilot with the files, target and
inputs they name (``pilot.joblib``, ``training.csv``, ``label``; ``amount`` and ``purpose``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import run_pasted

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str) -> list[str]:
    """The commands of the first ``sh`` block under ``heading``, comments dropped."""
    text = README.read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, f"no sh block under {heading}"
    commands, pending = [], ""
    for raw in block.group(1).splitlines():
        line = raw.split(" # ")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append((pending + line).strip())
        pending = ""
    return commands


def _loan_pilot(folder: Path) -> None:
    import joblib
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(7)
    n = 400
    frame = pd.DataFrame(
        {
            "amount": rng.integers(200, 5000, n),
            "purpose": rng.choice(["car", "home", "education", "business"], n),
        }
    )
    frame["label"] = np.where(
        (frame["amount"] > 2500) & (frame["purpose"] != "home"), "deny", "approve"
    )
    prep = ColumnTransformer(
        [("cat", OneHotEncoder(handle_unknown="ignore"), ["purpose"])], remainder="passthrough"
    )
    model = make_pipeline(prep, RandomForestClassifier(n_estimators=20, random_state=0))
    model.fit(frame[["amount", "purpose"]], frame["label"])
    joblib.dump(model, folder / "pilot.joblib")
    frame.to_csv(folder / "training.csv", index=False)


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    commands = _block_after("## Your own pilot")
    assert commands[0].startswith("shipway init") and len(commands) >= 8
    _loan_pilot(tmp_path)
    out = run_pasted(commands, tmp_path, timeout=240)
    log = out.stdout + out.stderr
    assert re.search(r'\{"id":"[^"]+","output":"(approve|deny)"', out.stdout), log
    assert "authentication on" in out.stderr, log
    exported = (tmp_path / "decisions.csv").read_text().splitlines()
    assert len(exported) == 2 and "car" in exported[1], log  # a header and the one decision
    assert "valid: shipway.yaml serves loans with model v1" in out.stdout, log


def test_the_readme_endpoint_example_is_a_valid_endpoint_section() -> None:
    import yaml

    from shipway.manifest import EndpointSpec
    from shipway.models.endpoints import ChatPredictor

    text = README.read_text()
    block = re.search(r"```yaml\n# endpoint.yaml\n(.*?)```", text, re.S)
    assert block is not None
    spec = EndpointSpec.model_validate(yaml.safe_load(block.group(1)))
    chat = ChatPredictor("https://llm.invalid/v1", spec, ["text"], 1.0, ["billing", "other"])
    assert chat.template.render({"text": "x"}).startswith('Answer with one word, as in {"label"')
    assert chat.reader.read("Billing.") == ("billing", None)
