"""Which settings `solve` answers with: those given, else a training run's own (said, in the caller's words), else
the defaults."""

from mathgrpo.config import load_config, save_config
from mathgrpo.evaluation.solve import solve_settings


def test_given_settings_win_and_a_run_folder_is_then_not_read(tmp_path, capsys):
    save_config(load_config(None, ["format.template=bare"]), tmp_path / "config.yaml")
    (tmp_path / "sft").mkdir()
    assert solve_settings(str(tmp_path), "think", "plain", 7, "--flags") == ("think", "plain", 7)
    assert capsys.readouterr().out == ""


def test_a_run_folder_gives_its_own_settings_and_says_what_changes_them(tmp_path, capsys):
    save_config(load_config(None, ["format.template=bare", "rollout.max_new_tokens=48"]), tmp_path / "config.yaml")
    (tmp_path / "sft").mkdir()
    assert solve_settings(str(tmp_path), None, None, None, "--these") == ("reasoning", "bare", 48)
    assert capsys.readouterr().out == f"settings: {tmp_path.resolve() / 'config.yaml'} (the run's own; --these change them)\n"
    assert solve_settings(str(tmp_path), "boxed", None, 9, "--these")[:3:2] == ("boxed", 9)


def test_anything_else_takes_the_defaults(tmp_path):
    assert solve_settings("tiny", None, None, None, "--flags") == ("reasoning", "auto", 1024)
