import pytest

from synth.labels import LabelError, LabelSchema


def test_prompts_and_lookup(tmp_path):
    s = LabelSchema(["NORMAL", "PNEUMONIA"], prompt_template="chest x-ray, {label}", prompts={"NORMAL": "clear lungs"})
    assert s.prompt_for(1) == "chest x-ray, pneumonia"
    assert s.prompt_for(0) == "clear lungs"
    assert s.index("pneumonia") == 1 and s.index("1") == 1
    assert s.condition(1).prompt == "chest x-ray, pneumonia"
    s.save(tmp_path / "l.json")
    assert LabelSchema.load(tmp_path / "l.json") == s


def test_errors_list_known_labels():
    s = LabelSchema(["normal", "pneumonia"])
    with pytest.raises(LabelError, match="unknown label 'covid'; known labels: normal, pneumonia"):
        s.index("covid")
    with pytest.raises(LabelError, match="out of range"):
        s.prompt_for(5)
    with pytest.raises(LabelError, match="no classes"):
        LabelSchema([])
    with pytest.raises(LabelError, match="duplicate"):
        LabelSchema(["a", "a"])


# ---------------------------------------------------------------------------
# Regressions found by tests/synth/test_parser_properties.py


def _one_line_error(fn, *args) -> str:
    with pytest.raises(LabelError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and len(msg.splitlines()) == 1, msg
    return msg


@pytest.mark.parametrize("name", ["²", "١", "9" * 5000])
def test_non_ascii_or_huge_digits_are_not_indices(name):
    # was: ValueError from int('²') / the 4300-digit limit; '١' (Arabic-Indic one) silently picked class 1
    assert "known labels: normal, pneumonia" in _one_line_error(LabelSchema(["normal", "pneumonia"]).index, name)


def test_numbers_are_not_indices_when_class_names_are_numbers():
    s = LabelSchema(["1", "2"])
    assert s.index("2") == 1 and s.index("1") == 0  # names first
    # was: '0' silently meant index 0, i.e. the class named '1'
    assert "class names here are numbers" in _one_line_error(s.index, "0")


def test_index_out_of_range_is_named():
    assert "out of range for 2 classes" in _one_line_error(LabelSchema(["a", "b"]).index, "2")


def test_ambiguous_case_insensitive_match_is_refused():
    s = LabelSchema(["Normal", "normal", "x"])
    assert s.index("normal") == 1 and s.index("X") == 2
    # was: silently the first of the two
    assert "ignoring case; spell it exactly" in _one_line_error(s.index, "NORMAL")


@pytest.mark.parametrize("template", ["chest x-ray, {label}, {view}", "{label} }", "{label}{0}"])
def test_template_that_cannot_be_filled_in_is_refused_up_front(template):
    # was: KeyError/ValueError/IndexError at the first prompt_for()
    assert "labels.prompt_template" in _one_line_error(LabelSchema, ["a"], (), template)


@pytest.mark.parametrize("d, needle", [
    ({"classes": ["a"], "junk": 1}, "unknown keys ['junk']"),  # was: TypeError from __init__
    ({}, "no 'classes' list"),  # was: TypeError
    (["a", "b"], "must be a JSON object"),  # was: TypeError
    ({"classes": "ab"}, "labels.classes must be a list of names"),  # was: two classes 'a' and 'b'
    ({"classes": [1, 2]}, "labels.classes must be non-empty names"),  # was: AttributeError in index()
    ({"classes": ["a", " "]}, "labels.classes must be non-empty names"),
    ({"classes": ["a"], "prompts": {"a": 3}}, "labels.prompts must map class names to prompt strings"),
])
def test_damaged_schema_json_is_a_label_error(d, needle):
    assert needle in _one_line_error(LabelSchema.from_json, d)


def test_unreadable_schema_file_is_a_label_error(tmp_path):
    (tmp_path / "l.json").write_bytes(b"{not json")
    assert "cannot be read" in _one_line_error(LabelSchema.load, tmp_path / "l.json")  # was: JSONDecodeError
    assert "cannot be read" in _one_line_error(LabelSchema.load, tmp_path / "missing.json")  # was: FileNotFoundError


def test_messages_quoting_line_breaks_stay_one_line():
    # was: "unknown label 'a<newline>b'" over two lines
    assert "'a\\nb'" in _one_line_error(LabelSchema(["x"]).index, "a\nb")


@pytest.mark.parametrize("label", ["1", None, 1.5, 2])
def test_check_index_refuses_non_indices(label):
    # was: TypeError/ValueError for None/'1', and 1.5 silently became 1
    _one_line_error(LabelSchema(["a", "b"]).check_index, label)


def test_default_template_names_no_modality():
    """A fundus set's metadata must not say "chest x-ray": the default prompt is the class name alone."""
    from synth.config import LabelsConfig

    assert LabelSchema(["no dr", "severe dr"]).prompt_for(1) == "severe dr"
    assert LabelsConfig().prompt_template == LabelSchema(["x"]).prompt_template == "{label}"
