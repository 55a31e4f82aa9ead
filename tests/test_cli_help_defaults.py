"""Every sub-command's --help states the default of each option that has one."""
import argparse

from sparsevision.cli import COMMANDS, HelpFormatter, build_parser


def _subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_option_with_a_default_states_it():
    subs = _subparsers(build_parser())
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        assert sub.formatter_class is HelpFormatter, name
        formatter = sub._get_formatter()
        for action in sub._actions:
            default = action.default
            if (not action.option_strings or default is None or isinstance(default, bool)
                    or default is argparse.SUPPRESS or default == []):
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert "default" in text.lower(), f"sparsevision {name} {action.option_strings[0]}: {text!r}"


def test_stated_default_is_the_value_and_raw_epilog_is_kept():
    subs = _subparsers(build_parser())
    train_help = " ".join(subs["train"].format_help().split())
    assert "--preset PRESET named configuration (see --list-presets) (default: default)" in train_help
    evaluate_help = " ".join(subs["evaluate"].format_help().split())
    assert "--batch-size BATCH_SIZE (default: 64)" in evaluate_help
    assert "\n  python -m sparsevision.vtab.export --data-dir DATA_DIR" in subs["vtab"].format_help()
