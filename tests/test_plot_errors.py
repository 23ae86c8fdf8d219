"""`critkl plot` names the file it refuses: a results.json that `check_results` refuses is
"<run_dir>/results.json: <what is wrong>"; a run directory without one is named as such."""

import json

from critkl import cli


def test_a_refused_results_json_is_named_by_its_path(tmp_path, capsys):
    runs = [{"name": f"seed={s}", "setting": "", "seed": s,
             "curve": {"iteration": [0, 5], "eval/pass_at_1": [0.2, 7.5]}} for s in (0, 1)]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "config.json").write_text(json.dumps({"rl": {"n": 3, "extra_digits": 1}}))
    assert cli.main(["plot", str(tmp_path), "--out", str(tmp_path / "plots")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"critkl plot: error: {tmp_path / 'results.json'}: runs[0]"), error
    assert len(error.splitlines()) == 1


def test_a_missing_results_json_names_the_run_directory(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"critkl plot: error: {tmp_path} is not a sweep's run directory")
