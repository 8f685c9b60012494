"""`editx export` and the clone/edit `--backend` / `--export-dir` flags, end to end on dummy:tiny."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from editx.cli import main
from editx.export.cli import selected_graphs
from editx.errors import InvalidInputError
from editx.export.graphs import GRAPHS

PROMPT = Path(__file__).resolve().parents[2].parent / "shared" / "audio" / "zero_shot_en_prompt.wav"
CLONE = ["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
         "--generated-text", "Hello.", "--max-new-tokens", "30", "--quiet"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    assert main(["export", "--model", "dummy:tiny", "--out", str(out), "--graphs", "dit", "--no-simplify",
                 "--quiet"]) == 0
    return out


def test_export_writes_the_stage_graphs_and_manifest(export_dir):
    manifest = json.loads((export_dir / "graphs.json").read_text())
    assert sorted(manifest["graphs"]) == ["dit", "dit_chunk"]  # the stage "dit" = both DiT graphs
    for name, entry in manifest["graphs"].items():
        assert (export_dir / entry["file"]).is_file() and entry["opset"] == 17 and entry["fingerprint"]
        assert entry["inputs"] == list(GRAPHS[name].inputs)
    assert manifest["model"] == "dummy:tiny"


def test_graph_selection():
    assert selected_graphs("all") == list(GRAPHS)
    assert selected_graphs("vq02, dit") == ["dit", "dit_chunk", "vq02_chunk"]
    with pytest.raises(InvalidInputError, match="unknown graph or stage 'llm'"):
        selected_graphs("llm")


def test_bad_graph_name_exits_with_an_error(tmp_path, capsys):
    assert main(["export", "--model", "dummy:tiny", "--out", str(tmp_path), "--graphs", "vocoder", "--quiet"]) == 2
    assert "vocoder" in capsys.readouterr().err


@pytest.mark.skipif(not PROMPT.is_file(), reason=f"{PROMPT} not found")
def test_clone_with_stages_from_the_export_folder(export_dir, tmp_path):
    out = tmp_path / "ort.wav"
    assert main(CLONE + ["--backend", "dit=onnxruntime", "--export-dir", str(export_dir), "--output", str(out)]) == 0
    assert sf.info(str(out)).samplerate == 24000


@pytest.mark.skipif(not PROMPT.is_file(), reason=f"{PROMPT} not found")
def test_clone_needing_an_unexported_graph_names_it(export_dir, tmp_path, capsys):
    assert main(CLONE + ["--backend", "onnxruntime", "--export-dir", str(export_dir),
                         "--output", str(tmp_path / "x.wav")]) == 2
    assert "flow_encoder" in capsys.readouterr().err


@pytest.mark.skipif(not PROMPT.is_file(), reason=f"{PROMPT} not found")
def test_tensorrt_on_cpu_is_refused(tmp_path, capsys):
    assert main(CLONE + ["--backend", "dit=tensorrt", "--output", str(tmp_path / "x.wav")]) == 2
    assert "CUDA" in capsys.readouterr().err
