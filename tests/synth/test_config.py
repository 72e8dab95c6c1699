import re
import pytest

from synth.config import ConfigError, config_to_dict, diff_configs, load_config, parse_override


def test_defaults_validate():
    cfg = load_config()
    assert cfg.data.hflip is False  # laterality: never flip by default
    assert cfg.train.prediction_type == "epsilon"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"'dat'.*did you mean 'data'"):
        load_config(None, ["dat.name=x"])


def test_wrong_types_name_key():
    with pytest.raises(ConfigError, match=r"train.steps: expected an integer"):
        load_config(None, ["train.steps=abc"])
    with pytest.raises(ConfigError, match=r"data.hflip: expected true or false"):
        load_config(None, ["data.hflip=3"])
    with pytest.raises(ConfigError, match=r"model.unet.block_out_channels: expected a list"):
        load_config(None, ["model.unet.block_out_channels=5"])


def test_choices_and_ranges():
    with pytest.raises(ConfigError, match="train.prediction_type: 'x0' is not one of"):
        load_config(None, ["train.prediction_type=x0"])
    with pytest.raises(ConfigError, match="train.steps must be > 0"):
        load_config(None, ["train.steps=0"])
    with pytest.raises(ConfigError, match=r"prompt_template must contain"):
        load_config(None, ["labels.prompt_template=no placeholder"])


def test_overrides_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-4\n  steps: 10\n")
    cfg = load_config(p, ["train.steps=20", "model.unet.block_out_channels=[16,32,32]", "model.unet.attention_levels=[false,true,true]"])
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.steps == 20
    assert cfg.model.unet.block_out_channels == [16, 32, 32]
    assert parse_override("a.b=null") == ("a.b", None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_unsafe_yaml_is_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("train: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_diff_configs():
    a = config_to_dict(load_config())
    b = config_to_dict(load_config(None, ["model.unet.layers_per_block=2", "train.steps=5"]))
    assert diff_configs(a, b) == ["model.unet.layers_per_block", "train.steps"]


@pytest.mark.parametrize("bad, needle", [("train.lr=-1", "train.lr must be > 0"),
                                         ("train.log_every=0", "train.log_every must be > 0"),
                                         ("train.text_lr=0", "train.text_lr must be > 0"),
                                         ("train.weight_decay=-0.1", "train.weight_decay must be >= 0")])
def test_nonsense_training_numbers_are_refused_before_set_up(bad, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [bad])
    assert needle in str(e.value)


def test_written_files_follow_the_umask_not_0600(tmp_path):
    import os
    import stat

    from synth.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------
# Regressions found by tests/synth/test_parser_properties.py: each input used to escape as a
# traceback (or load silently wrong); now it is a one-line ConfigError naming the key and the fix.


def _load_text(tmp_path, text: str | bytes, overrides=()):
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_config(p, overrides)


def _one_line_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and len(msg.splitlines()) == 1, msg
    return msg


def test_non_utf8_file_is_a_config_error(tmp_path):
    # was: UnicodeDecodeError
    assert "is not UTF-8 text (byte 0xff at offset 0)" in _one_line_error(_load_text, tmp_path, b"\xff\xfetrain: 1\n")


@pytest.mark.parametrize("text, override", [("train: {lr: .nan}\n", None), ("train: {kl_weight: .inf}\n", None),
                                            (None, "sample.guidance=nan"), (None, "eval.guidance=[1.5, .inf]"),
                                            (None, "train.adam_beta1=-.inf")])
def test_nan_and_inf_are_refused(tmp_path, text, override):
    # was: loaded; NaN passes every `x <= 0` range check
    msg = _one_line_error(_load_text, tmp_path, text or "", [override] if override else [])
    assert "expected a finite number" in msg


def test_float_key_with_a_huge_integer_is_refused(tmp_path):
    # was: OverflowError (int too large to convert to float)
    assert "train.lr:" in _one_line_error(load_config, None, ["train.lr=" + "9" * 400])
    assert "train.lr:" in _one_line_error(_load_text, tmp_path, "train: {lr: " + "9" * 400 + "}\n")


@pytest.mark.parametrize("text, needle", [
    ("a: &a [*a]\n", "unknown config key 'a'"),  # was: ValueError: Circular reference detected
    ("data: {name: 2024-01-01}\n", "data.name: expected a string"),  # was: TypeError: date is not JSON serializable
    ("data: {name: !!binary aGk=}\n", "data.name: expected a string"),  # was: TypeError (bytes)
    ("data: {name: 2024-13-45}\n", "cannot convert (month must be in 1..12)"),  # was: ValueError from datetime
    ("train: {lr: " + "9" * 5000 + "}\n", "cannot convert (Exceeds the limit"),  # was: ValueError (int digits)
    ("[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),  # was: RecursionError
])
def test_unusual_yaml_values_are_config_errors(tmp_path, text, needle):
    assert needle in _one_line_error(_load_text, tmp_path, text)


def test_deeply_nested_override_is_a_config_error():
    # was: RecursionError
    assert "nested too deeply" in _one_line_error(load_config, None, ["train.lr=" + "[" * 2000 + "]" * 2000])


def test_duplicate_keys_are_refused(tmp_path):
    # was: the second `train:` silently replaced the first (steps=5 lost)
    msg = _one_line_error(_load_text, tmp_path, "train:\n  steps: 5\ntrain:\n  lr: 0.1\n")
    assert "duplicate key 'train'" in msg and "line 3" in msg
    cfg = _load_text(tmp_path, "train: &t {steps: 7}\nsample: {<<: *t, seed: 1}\n")
    assert cfg.train.steps == 7 and cfg.sample.steps == 7  # anchors and merge keys still work


def test_yaml_errors_name_the_problem_not_the_context(tmp_path):
    msg = _one_line_error(_load_text, tmp_path, "train: !!python/object/apply:os.system ['true']\n")
    assert "could not determine a constructor for the tag" in msg and "line 1" in msg


@pytest.mark.parametrize("text, override", [
    ('train: {attention: "sd\\npa"}\n', None),  # choice check quoted the value raw
    ('"tra\\nin": {}\n', None),  # unknown key
    ("", "labels.prompts.a\nb=1"),  # dict entry key
    ("", "train.steps\n"),  # no '='
    ("", "eval.arms=['real\\u2028x']"),
])
def test_messages_quoting_line_breaks_stay_one_line(tmp_path, text, override):
    # was: the message spanned two lines
    _one_line_error(_load_text, tmp_path, text, [override] if override else [])


@pytest.mark.parametrize("template", ["chest x-ray, {label}, {view}", "{label} }", "{label}{0}", "{label.x}"])
def test_prompt_template_that_cannot_be_filled_in_is_refused(template):
    # was: loaded, then KeyError/ValueError/IndexError at the first prompt of training
    assert "labels.prompt_template" in _one_line_error(load_config, None, [f"labels.prompt_template='{template}'"])


@pytest.mark.parametrize("bad, needle", [
    ("data.seed=-1", "data.seed must be in [0, 2**63)"),  # numpy's default_rng refuses it at data time
    ("train.seed=" + str(2**64), "train.seed must be in [0, 2**63)"),
    ("data.max_items=0", "data.max_items must be > 0 (or null for all)"),  # 0 silently meant "all"
    ("data.val_max_items=-3", "data.val_max_items must be > 0"),
    ("data.phantom_items=0", "data.phantom_items must be > 0"),
    ("train.min_snr_gamma=-5", "train.min_snr_gamma must be > 0"),  # negative loss weights
    ("train.adam_beta2=1", "train.adam_beta2 must be in [0, 1)"),  # torch.optim raises at set-up
    ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
    ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
    ("model.unet.block_out_channels=[]", "model.unet.block_out_channels must be positive channel counts"),
    ("model.text.num_heads=0", "model.text.num_heads must be > 0"),
    ("sample.per_class=0", "sample.per_class must be > 0"),
    ("eval.max_rotate=-10", "eval.max_rotate must be >= 0"),
    ("train.beta_schedule=cosine", "train.beta_schedule: 'cosine' is not one of"),  # diffusers raised at set-up
    ("data.name=", "data.name is empty"),  # Path('') is the current folder
    ("labels.classes=[a, a]", "labels.classes has duplicate names"),
    ("labels.prompts={normal: ' '}", "labels.prompts gives ['normal'] an empty prompt"),
    ("eval.sweep_arms=[real, bogus]", "eval.sweep_arms: 'bogus' is not one of"),
])
def test_out_of_range_values_are_refused(bad, needle):
    assert needle in _one_line_error(load_config, None, [bad])


def test_non_string_prompt_keys_are_refused(tmp_path):
    # was: `yes:` silently became the class 'True'
    msg = _one_line_error(_load_text, tmp_path, "labels: {prompts: {yes: clear lungs}}\n")
    assert "labels.prompts: key True is not a string" in msg and "quote it" in msg


def test_text_that_yaml_reads_as_a_mapping_gets_a_quoting_hint():
    msg = _one_line_error(load_config, None, ["labels.prompt_template={label}"])
    assert "quote the text: --set \"labels.prompt_template='...'\"" in msg
    assert load_config(None, ["labels.prompt_template='{label}'"]).labels.prompt_template == "{label}"


@pytest.mark.parametrize("where", ["directory", "empty"])
def test_directory_or_empty_config_path_is_refused(tmp_path, where):
    # was: "" silently loaded the defaults; a directory was reported as "not found"
    msg = _one_line_error(load_config, tmp_path if where == "directory" else "")
    assert "is a directory" in msg


def test_overrides_leave_the_loaded_values_unchanged():
    values = {"train": {"steps": 5}}
    from synth.config import merge_overrides

    out = merge_overrides(values, ["train.lr=0.5", "data.name=x"])
    assert values == {"train": {"steps": 5}} and out == {"train": {"steps": 5, "lr": 0.5}, "data": {"name": "x"}}


@pytest.mark.parametrize("override, message", [
    ("model.unet.norm_num_groups=5", r"model.unet.block_out_channels .* is not a multiple of model.unet.norm_num_groups=5"),
    ("model.vae.norm_num_groups=7", r"model.vae.block_out_channels .* not a multiple of model.vae.norm_num_groups=7"),
    ("model.text.num_heads=3", r"model.text.hidden_size=\d+ is not a multiple of model.text.num_heads=3"),
    ("model.text.max_length=1", r"model.text.max_length must be >= 3"),
])
def test_scratch_model_shapes_are_checked_up_front(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides,stage,says", [
    (["data.resolution=6"], "autoencoder", r"data.resolution 6 cannot pass the autoencoder's 2 halvings .* data.resolution=8"),
    (["data.resolution=30", "model.codec=vae"], "ldm", r"cannot pass the autoencoder's 2 halvings"),
    (["data.resolution=17"], "ldm", r"UNet cannot take a 17 px image: .* multiple of 4; use data.resolution=16"),
    (["data.resolution=36", "model.codec=vae"], "ldm", r"UNet cannot take the 9 px latent of a 36 px image"),
])
def test_resolution_that_a_model_cannot_halve_is_refused(overrides, stage, says):
    from synth.config import check_resolution

    with pytest.raises(ConfigError, match=says):
        check_resolution(load_config(None, overrides), stage)


@pytest.mark.parametrize("overrides,stage", [(["data.resolution=28"], "ldm"), (["data.resolution=28"], "bridge"),
                                             (["data.resolution=64", "model.codec=vae"], "ldm"),
                                             (["data.resolution=8"], "autoencoder")])
def test_resolutions_the_models_take_pass(overrides, stage):
    from synth.config import check_resolution

    check_resolution(load_config(None, overrides), stage)


def test_constraints_are_declared_next_to_their_fields():
    """Issue 16: every range and choice is field metadata in synth.config.schema (no key tables far away), and
    each one is enforced: the default passes, a value just outside fails naming the key."""
    from synth.config import rules
    from synth.config.checks import _breaks

    declared = dict(rules())
    assert {"data.resolution", "train.lr", "sample.sampler", "sample.tau", "data.seed", "train.ema_decay",
            "model.unet.block_out_channels", "eval.quality_threshold"} <= set(declared)
    assert declared["sample.sampler"]["choices"][0] == "dpmpp_2m"
    outside = {"positive": 0, "non_negative": -1, "channels": [0]}
    for key, rule in declared.items():
        bad = ("nope" if rule["kind"] == "choice" else outside.get(rule["kind"])
               if rule["kind"] != "interval" else rule.get("hi_value", rule["hi"]) + 1)
        assert _breaks(rule, bad), key
        with pytest.raises(ConfigError, match=re.escape(key.split(".")[-1])):
            load_config(None, [f"{key}={bad}"])
