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
    cfg = load_config(p, ["train.steps=20", "model.unet.block_out_channels=[8,16,16]"])
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.steps == 20
    assert cfg.model.unet.block_out_channels == [8, 16, 16]
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
