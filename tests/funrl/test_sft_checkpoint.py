"""funrl.sft_checkpoint.same_setting: which resumed config values count as the run's own."""

from __future__ import annotations

from funrl.sft_checkpoint import same_setting


def test_a_path_and_a_symlink_to_it_are_the_same_setting_and_other_folders_are_not(tmp_path, monkeypatch):
    model, other = tmp_path / "model", tmp_path / "other"
    model.mkdir()
    other.mkdir()
    (tmp_path / "link").symlink_to(model, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert same_setting(str(model), str(tmp_path / "link"))
    assert same_setting(str(model), "model")  # relative to the working directory
    assert not same_setting(str(model), str(other))
    assert not same_setting(str(model), str(tmp_path / "gone"))  # a missing path matches only itself
    assert same_setting(str(tmp_path / "gone"), str(tmp_path / "gone"))
    assert same_setting(3, 3) and not same_setting(3, 4) and not same_setting("", ".")
    assert not same_setting("tiny", "demo")  # plain strings that are no paths
