"""The option schema (``addon.wire.options``) drives every surface: change an option's default and
range there, and the batch's and the server's command lines, the config dataclass and the panel's
property follow. Asserts on the derived objects, never on source text."""
from __future__ import annotations

import argparse
import importlib.util
from dataclasses import replace

import pytest

from addon.batch import cli
from addon.wire import options
from addon.wire.errors import Exit
from inference_server import __main__ as server_cli

BATCH_ARGS = ["-i", "photo.jpg", "-o", "out"]


@pytest.fixture
def changed_resolution(monkeypatch):
    """The schema with ``resolution`` given a new default (64) and range [16, 120]."""
    old = options.BY_NAME["resolution"]
    new = replace(old, default=64, minimum=16, maximum=120, soft_maximum=100)
    monkeypatch.setattr(options, "OPTIONS", tuple(new if o is old else o for o in options.OPTIONS))
    monkeypatch.setattr(options, "BY_NAME", dict(options.BY_NAME, resolution=new))
    return new


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(action for action in parser._actions if action.dest == dest)


def _server_parsers() -> list:
    commands = _action(server_cli._parser(), "command")
    return [commands.choices["serve"], commands.choices["reconstruct"]]


def _accepts(parser: argparse.ArgumentParser, args: list) -> bool:
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        assert exc.code == Exit.USAGE
        return False
    return True


def test_the_schema_as_declared_accepts_what_the_changed_one_refuses(capsys):
    """Baseline, so the next test's refusals come from the change: 130 and 12 are fine today."""
    assert cli.parse_args(BATCH_ARGS + ["--resolution", "130"]).request == {"resolution": 130}
    serve, recon = _server_parsers()
    assert _accepts(serve, ["--resolution", "12"]) and _accepts(recon, ["p.jpg", "--resolution", "130"])


def test_command_lines_follow_a_changed_option(changed_resolution, capsys):
    batch = cli.build_parser()
    for parser, prefix in [(batch, BATCH_ARGS), *((p, a) for p, a in zip(_server_parsers(), ([], ["p.jpg"])))]:
        action = _action(parser, "resolution")
        assert "[16, 120], default 64" in action.help
        assert action.default is None  # not given: not sent, the server's default applies
        assert not _accepts(parser, prefix + ["--resolution", "130"])
        assert not _accepts(parser, prefix + ["--resolution", "12"])
        assert parser.parse_args(prefix + ["--resolution", "120"]).resolution == 120
    assert "outside [16, 120]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(BATCH_ARGS + ["--resolution", "130"])


def test_every_help_text_prints_even_with_a_percent_sign():
    """argparse formats help strings with %: every option's help must survive ``--help`` verbatim."""
    assert any("%" in option.help for option in options.OPTIONS)   # the case this guards is present
    for parser in (cli.build_parser(), *_server_parsers()):
        text = parser.format_help()
        for option in options.OPTIONS:
            if option.flag in text:
                assert option.help.split()[0] in text


def test_config_and_panel_property_follow_a_changed_option(changed_resolution):
    config = options.config_class("Config", options.on_side(options.SERVER, options.LIMIT), "test")
    assert config().resolution == 64
    assert config().with_params({"resolution": 120}).resolution == 120
    with pytest.raises(options.ProtocolError, match=r"outside \[16, 120\]"):
        config().with_params({"resolution": 130})
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("bpy is not installed: the panel property is not checked")
    from addon.ui.properties import option_property

    keywords = option_property(changed_resolution).keywords
    assert (keywords["default"], keywords["min"], keywords["max"], keywords["soft_max"]) == (64, 16, 120, 100)
