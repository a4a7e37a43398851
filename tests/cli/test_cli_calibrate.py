"""`chunkcache calibrate` on the command line: bad input exits 2 naming the field, before any model loads."""

import json

from chunkcache.blend.config import DEFAULT_MODE
from chunkcache.cli.main import build_parser, main


def test_calibrate_parses_its_options():
    args = build_parser().parse_args(["calibrate", "--ratios", "0.1,0.3", "--target-agreement", "0.9",
                                      "--target-kl", "0.05", "--limit", "2", "--critical-layers",
                                      "--decode-correction", "512", "--decode-correction-steps", "3"])
    assert args.ratios == [0.1, 0.3] and args.target_agreement == 0.9 and args.target_kl == 0.05
    assert args.limit == 2 and args.critical_layers and args.mode == DEFAULT_MODE and args.decode_correction == 512
    assert args.decode_correction_steps == 3


def test_calibrate_rejects_bad_input_before_loading_a_model(tmp_path, capsys):
    bad = tmp_path / "own.json"
    bad.write_text(json.dumps([{"chunks": [], "question": "q"}]))
    assert main(["calibrate", "--data", str(bad)]) == 2
    assert "chunks" in capsys.readouterr().err
    assert main(["calibrate", "--mode", "naive"]) == 2
    assert "mode" in capsys.readouterr().err
    assert main(["calibrate", "--ratios", "0.5,0.1"]) == 2
    assert "ratios" in capsys.readouterr().err
    assert main(["calibrate", "--decode-correction", "-1"]) == 2
    assert "decode_correction" in capsys.readouterr().err
    assert main(["calibrate", "--decode-correction", "512", "--decode-correction-steps", "2"]) == 2
    assert "one, not both" in capsys.readouterr().err


def test_serve_calibrate_takes_the_correction_and_names_a_bad_one_before_loading_a_model(tmp_path, capsys):
    args = build_parser().parse_args(["serve", "--calibrate", "--calibrate-decode-correction-steps", "2"])
    assert args.calibrate and args.calibrate_decode_correction_steps == 2 and args.calibrate_decode_correction == 0
    assert main(["serve", "--calibrate", "--calibrate-decode-correction", "8", "--calibrate-decode-correction-steps",
                 "2", "--cache-dir", str(tmp_path)]) == 2
    assert "one, not both" in capsys.readouterr().err
