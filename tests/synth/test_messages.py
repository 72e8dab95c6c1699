"""The shared message helpers: one rule for prompts and captions typed on the command line."""
import pytest

from synth.config import ConfigError
from synth.messages import MAX_PROMPT_CHARS, one_line, prompt_problem
from synth.samplers.bulk import BulkError
from synth.samplers.orchestrate import check_negative_prompt
from synth.samplers.translate import TranslateRequest, check_translate


@pytest.mark.parametrize("text, problem", [
    ("chest x-ray, pneumonia", None),
    ("x" * MAX_PROMPT_CHARS, None),
    ("x" * (MAX_PROMPT_CHARS + 1), "has 10,001 characters"),
    ("a\nb", "holds a line break"),
    ("a\u2028b", "holds a line break"),  # a break str.splitlines() honours, so the manifest would split there
    ("  ", "is empty"),
])
def test_prompt_problem_names_what_is_wrong(text, problem):
    assert prompt_problem(text) == problem


def test_negative_prompt_and_translate_captions_share_the_rule():
    meta = {"path": "m", "conditioner": "text"}
    check_negative_prompt("  ", meta, 1.5, print)  # an empty negative prompt is the default, not an error
    with pytest.raises(ConfigError, match="--negative-prompt must be one line .* holds a line break; shorten it"):
        check_negative_prompt("blurry\ncropped", meta, 1.5, print)

    class TextGenerator:  # what check_translate reads of a caption-conditioned generator
        class conditioner:
            name = "text"
        channels = 1

    req = TranslateRequest(model="m", out="o", n=1, spec=None, input="in", source="CT of the head",
                           target="x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(BulkError) as e:
        check_translate(req, TextGenerator())
    assert str(e.value) == one_line(str(e.value)) and "--target must be one line" in str(e.value)
    assert "has 10,001 characters" in str(e.value)
