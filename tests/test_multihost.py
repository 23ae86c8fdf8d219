"""Multi-process runs: the distributed flags."""

import pytest

from critkl import cli

TINY_PRETRAIN = ["--model", "tiny", "--max-digits", "1", "--eval-extra-digits", "2",
                 "--batch-size", "8", "--warmup-steps", "2", "--learning-rate", "3e-3",
                 "--eval-problems", "4"]


@pytest.mark.parametrize(
    "flags, message",
    [(["--num-processes", "2"], "--coordinator, --process-id missing"),
     (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
      "--process-id 2 must be in 0..1"),
     (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
     (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "at least 1")],
)
def test_bad_distributed_flags_give_one_paragraph_and_status_2(tmp_path, capsys, flags, message):
    status = cli.main(["pretrain", "--run-dir", str(tmp_path), *TINY_PRETRAIN, *flags])
    error = capsys.readouterr().err
    assert status == 2
    assert message in error and len(error.strip().splitlines()) == 1
    assert not tmp_path.joinpath("config.json").exists()
