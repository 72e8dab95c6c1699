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
