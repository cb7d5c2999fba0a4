"""The CLI's shared options and its wording of library errors as flags."""

import pytest

from lora_audit.cli import main
from lora_audit.cli.options import error_message, flag_of, int_list
from lora_audit.errors import InputError, UsageError


def test_flag_of_words_inputs_as_flags():
    assert flag_of("attack_model") == "--attack-model"
    assert flag_of("base") == "--base"
    assert flag_of("face_weights") == "--face-weights"
    assert flag_of("in_place") == "--in-place"
    assert flag_of("images") == "--images"


def test_input_errors_name_flags_and_other_errors_are_unchanged():
    error = InputError("output", "x.safetensors", "exists", fix=("force", "to replace it"))
    assert str(error) == "output x.safetensors: exists; set force to replace it"
    assert error_message(error) == "--output x.safetensors: exists; pass --force to replace it"
    assert error_message(InputError("attack_model", None, "needed")) == "--attack-model: needed"
    assert error_message(UsageError("--jobs must be >= 1")) == "--jobs must be >= 1"


def test_main_prints_an_input_error_with_flags(tmp_path, monkeypatch, capsys):
    import lora_audit.scan.strip

    def refuse(source, destination, **kwargs):
        raise InputError("output", destination, "exists", fix=("force", "to replace it"))

    monkeypatch.setattr(lora_audit.scan.strip, "strip_metadata", refuse)
    source, target = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["strip", str(source), "-o", str(target)]) == 4
    assert capsys.readouterr().err == f"lora-audit: error: --output {target}: exists; pass --force to replace it\n"


def test_int_list():
    assert int_list("1, 5,10,", "--snapshot-steps") == (1, 5, 10)
    with pytest.raises(UsageError, match="--snapshot-steps must be comma-separated integers"):
        int_list("1,x", "--snapshot-steps")


def test_shared_options_have_one_help_text():
    import typer

    from lora_audit.cli import app

    group = typer.main.get_command(app)
    helps = {"--base": [], "--attack-model": []}
    for name in ("scan", "finetune", "shadow", "train-attack", "reconstruct", "evaluate"):
        for param in group.commands[name].params:
            if param.opts in (["--base"], ["--attack-model"]):
                helps[param.opts[0]].append(param.help)
    assert helps["--base"] == 6 * ["Local diffusers pipeline directory of the base model \\[default: the toy base]."]
    assert len(helps["--attack-model"]) == 3 and len(set(helps["--attack-model"])) == 1  # scan, reconstruct, evaluate


def test_device_is_checked_on_every_model_command(tmp_path, capsys):
    from lora_audit.cli.options import checked_device

    assert checked_device(None) is None and checked_device("cpu") == "cpu"
    for command in (["scan", str(tmp_path)], ["shadow", "-o", str(tmp_path / "s")], ["evaluate", str(tmp_path)],
                    ["finetune", str(tmp_path), "-o", str(tmp_path / "x.safetensors")],
                    ["train-attack", str(tmp_path), "-o", str(tmp_path / "a")],
                    ["reconstruct", str(tmp_path / "x.safetensors"), "-o", str(tmp_path / "r")]):
        assert main([*command, "--device", "not-a-device"]) == 4, command
        assert "--device 'not-a-device' is not a torch device" in capsys.readouterr().err


def test_finetune_refuses_to_replace_a_lora_before_training(tmp_path, capsys):
    from lora_audit.diffusion.lora_output import check_outputs

    existing = tmp_path / "me.safetensors"
    existing.write_bytes(b"a user's file")
    args = ["finetune", str(tmp_path / "photos"), "-o", str(existing)]
    assert main(args) == 4 and existing.read_bytes() == b"a user's file"
    assert "me.safetensors already exist(s); pass --force to replace" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path), "-o", str(tmp_path / "no" / "me.safetensors")]) == 4
    assert "is in a folder that does not exist" in capsys.readouterr().err
    (tmp_path / "new_step_5.safetensors").write_bytes(b"x")
    with pytest.raises(InputError):
        check_outputs(tmp_path / "new.safetensors", [5])
    check_outputs(tmp_path / "new.safetensors", [5], overwrite=True)
    check_outputs(tmp_path / "new.safetensors", [6])


def test_attack_flags_without_the_attack_are_a_usage_error(tmp_path, capsys):
    for flags in (["--no-attack", "--references", str(tmp_path)], ["--skip-weights", "--base", str(tmp_path)]):
        assert main(["scan", str(tmp_path), *flags]) == 4, flags
        assert "need the attack" in capsys.readouterr().err


def test_the_scan_progress_bar_counts_files_and_findings(monkeypatch):
    import io

    from rich.console import Console

    import lora_audit.cli.progress as progress
    from lora_audit.results import FileResult
    from lora_audit.rules import make_finding

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    screen = io.StringIO()
    monkeypatch.setattr("rich.console.Console", lambda **kw: Console(file=screen, force_terminal=True, width=120))
    with progress.scan_progress(3, quiet=False) as advance:
        advance(FileResult("a.safetensors", findings=[make_finding("LA101", "m"), make_finding("LA104", "m")]))
        advance(FileResult("dir/b.safetensors"))
    shown = screen.getvalue()
    assert "2/3" in shown and "2 findings" in shown and "dir/b.safetensors" in shown
    with progress.scan_progress(3, quiet=False) as advance:
        advance.starting("dir/c.safetensors")  # an attack begins: seconds before the file is done
    assert "attacking dir/c.safetensors" in screen.getvalue()
    with progress.scan_progress(3, quiet=True) as advance:  # --quiet: nothing at all
        advance(FileResult("c.safetensors"))
        advance.starting("c.safetensors")


def test_quiet_shows_errors_only_and_restores_the_log_level():
    import logging

    from lora_audit.cli.progress import errors_only

    logger = logging.getLogger("lora_audit")
    before = logger.level
    with errors_only(True):
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
    assert logger.level == before
