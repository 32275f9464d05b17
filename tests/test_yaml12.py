"""pipeline.yaml is read without YAML 1.1's surprises (issue 11): a plain scalar that YAML 1.1 and YAML 1.2 read
differently is refused with both readings at its line and YAML path; deep nesting and overlong integers are
refused in one line; a --param integer too long to convert is too."""
from __future__ import annotations

import pytest

from pipeline.cli import main
from tests.test_spec import MINIMAL, edit, error_of, write  # noqa: F401 - the fixture


@pytest.mark.parametrize("line, written, message", [
    ("  TopK: {}\n", "010", "parameters.TopK: 010 is ambiguous: YAML 1.1 reads it as the number 8, YAML 1.2 as the "
                            "number 10; write 10 or 8, whichever you mean"),
    ("  TopK: {}\n", "08", "parameters.TopK: 08 is ambiguous: YAML 1.1 reads it as the text '08', YAML 1.2 as the "
                           "number 8; write 8 or '08', whichever you mean"),
    ("  TopK: {}\n", "0o12", "parameters.TopK: 0o12 is ambiguous: YAML 1.1 reads it as the text '0o12', YAML 1.2 as "
                             "the number 10; write 10 or '0o12', whichever you mean"),
    ("  TopK: {}\n", "1_000", "parameters.TopK: 1_000 is ambiguous: YAML 1.1 reads it as the number 1000, YAML 1.2 "
                              "as the text '1_000'; write '1_000' or 1000, whichever you mean"),
    ("  TopK: {}\n", "0b11", "parameters.TopK: 0b11 is ambiguous: YAML 1.1 reads it as the number 3, YAML 1.2 as the "
                             "text '0b11'; write '0b11' or 3, whichever you mean"),
    ("similarity:\n  max_runtime_seconds: {}\n", "1:30",
     "similarity.max_runtime_seconds: 1:30 is ambiguous: YAML 1.1 reads it as the number 90, YAML 1.2 as the text "
     "'1:30'; write '1:30' or 90, whichever you mean"),
    ("  MinScore: {}\n", "5e-1", "parameters.MinScore: 5e-1 is ambiguous: YAML 1.1 reads it as the text '5e-1', YAML "
                                 "1.2 as the number 0.5; write 0.5 or '5e-1', whichever you mean"),
    ("similarity:\n  spot: {}\n", "yes", "similarity.spot: yes is ambiguous: YAML 1.1 reads it as the boolean true, "
                                         "YAML 1.2 as the text 'yes'; write 'yes' or true, whichever you mean"),
    ("security:\n  network_isolation: {}\n", "Off",
     "security.network_isolation: Off is ambiguous: YAML 1.1 reads it as the boolean false, YAML 1.2 as the text "
     "'Off'; write 'Off' or false, whichever you mean"),
    ("tags:\n  team: {}\n", "n", "tags.team: n is ambiguous: YAML 1.1 reads it as the boolean false, YAML 1.2 as the "
                                 "text 'n'; write 'n' or false, whichever you mean"),
    ("tags:\n  since: {}\n", "2026-01-01", "tags.since: 2026-01-01 is ambiguous: YAML 1.1 reads it as the date "
                                           "2026-01-01, YAML 1.2 as the text '2026-01-01'; write '2026-01-01'"),
    ("tags:\n  {}: x\n", "on", "tags: on is ambiguous: YAML 1.1 reads it as the boolean true, YAML 1.2 as the text "
                               "'on'; write 'on' or true, whichever you mean"),
])
def test_a_value_yaml_1_1_reads_otherwise_is_refused_where_it_is(write, line, written, message):  # noqa: F811
    text = MINIMAL + line.format(written)  # the value is on the last line
    assert error_of(write(text)) == f"pipeline.yaml:{len(text.splitlines())}: {message}"


@pytest.mark.parametrize("extra, read, value", [
    ("  TopK: 10\n", lambda spec: spec.parameters["TopK"], 10),
    ("  TopK: 0x10\n", lambda spec: spec.parameters["TopK"], 16),
    ("  MinScore: -0.5\n", lambda spec: spec.parameters["MinScore"], -0.5),
    ("  MinScore: 5.0e-1\n", lambda spec: spec.parameters["MinScore"], 0.5),
    ("  MinScore: .5\n", lambda spec: spec.parameters["MinScore"], 0.5),
    ("tags:\n  team: 'yes'\n", lambda spec: spec.tags["team"], "yes"),
    ("tags:\n  since: '2026-01-01'\n", lambda spec: spec.tags["since"], "2026-01-01"),
    ('tags:\n  code: "010"\n', lambda spec: spec.tags["code"], "010"),
])
def test_values_both_versions_read_alike_and_quoted_text_load(write, extra, read, value):  # noqa: F811
    from pipeline.spec import load_spec

    assert read(load_spec(write(MINIMAL + extra))) == value


def test_deep_nesting_is_refused_in_one_line_not_a_recursion_error(write):  # noqa: F811
    path = write(MINIMAL + "tags: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error_of(path) == ("pipeline.yaml:9: invalid YAML: nested more than 32 levels deep (the spec is 3 levels "
                              "deep); flatten it (column 38)")


def test_a_5000_digit_integer_is_refused_where_it_is(write):  # noqa: F811
    path = write(edit(MINIMAL, "  InstanceType: ml.c5.xlarge\n", "  InstanceType: ml.c5.xlarge\n  TopK: " + "7" * 5000 + "\n"))
    assert error_of(path) == ("pipeline.yaml:9: parameters.TopK: an integer of 5000 digits, more than any setting "
                              "takes (at most 20); write the value meant")


def test_a_5000_digit_param_is_refused_in_one_readable_line(tmp_path, capsys):
    assert main(["run", "--param", "TopK=" + "7" * 5000, "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err == (f"error: --param TopK={'7' * 475}... (5005 characters): an integer of 5000 "
                                       "digits; TopK takes at most 20\n")
