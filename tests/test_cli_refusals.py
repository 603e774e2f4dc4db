"""The command-line tools refuse bad input with exit code 2 and one line naming it, and leave nothing behind."""

import subprocess
import sys

from fedskel.fl.cli import sim_main

from artifact_edit import members_of, write


def test_fedskel_tune_refuses_a_file_as_database_before_loading_the_model(tmp_path):
    db = tmp_path / "db.json"
    db.write_text("{}")
    result = subprocess.run([sys.executable, "-m", "fedskel.compiler.tune_cli", "no-such-model.onnx", "--db", db],
                            capture_output=True, text=True)
    assert result.returncode == 2 and f"tuning database {db} is a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_fedskel_sim_leaves_no_run_directory_when_it_fails(tmp_path, capsys):
    out = tmp_path / "runs" / "bad"
    assert sim_main(["--artifact", str(tmp_path / "missing.fsk"), "--out", str(out), "--no-progress"]) == 2
    assert "not a FedSkel artifact" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert sim_main(["--lr", "nan", "--out", str(out), "--no-progress"]) == 2
    assert "lr must be a finite number > 0, got nan" in capsys.readouterr().err
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert sim_main(["--momentum", "-1", "--out", str(existing), "--no-progress"]) == 2
    assert (existing / "keep.txt").read_text() == "x"  # a directory the user made is never removed


def test_fedskel_sim_needs_allow_unsigned_for_an_unsigned_artifact(digits_artifact, tmp_path, capsys):
    unsigned = write(tmp_path / "unsigned.fsk", [e for e in members_of(digits_artifact) if e[0] != "manifest.sig"])
    args = ["--artifact", str(unsigned), "--clients", "2", "--rounds", "1", "--local-steps", "1", "--setskel-steps", "1", "--no-progress"]
    assert sim_main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "the artifact is not signed" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert sim_main([*args, "--out", str(tmp_path / "allowed"), "--allow-unsigned"]) == 0
    assert (tmp_path / "allowed" / "report.json").exists()
