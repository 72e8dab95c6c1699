"""Config: frozen dataclasses are the schema (each field with its default and its constraint), YAML presets
are data.

``load_config(path, overrides)`` reads a YAML preset (safe loader only), applies ``a.b=c`` overrides and
validates everything against the dataclasses.  Unknown keys are errors that suggest the closest valid key;
wrong types are errors that name the key and the expected type; ranges and choices are declared next to the
fields in :mod:`synth.config.schema` and checked by :mod:`synth.config.checks`.
"""
from synth.config.checks import check_declared, check_resolution, validate
from synth.config.parse import (config_from_dict, config_to_dict, diff_configs, load_config, merge_overrides,
                                parse_override, parse_yaml, read_yaml, save_config)
from synth.config.schema import (EVAL_ARMS, EVAL_GENERATORS, EVAL_RECIPES, MAX_RESOLUTION, Config, ConfigError, DataConfig, EvalConfig, LabelsConfig,
                                 ModelConfig, SampleConfig, TextConfig, TrainConfig, UNetConfig, VAEConfig, rules)
from synth.messages import one_line, show

__all__ = ["Config", "ConfigError", "DataConfig", "EVAL_ARMS", "EVAL_GENERATORS", "EVAL_RECIPES", "EvalConfig", "LabelsConfig", "MAX_RESOLUTION",
           "ModelConfig", "SampleConfig", "TextConfig", "TrainConfig", "UNetConfig", "VAEConfig", "check_declared",
           "check_resolution", "config_from_dict", "config_to_dict", "diff_configs", "load_config", "merge_overrides",
           "one_line", "parse_override", "parse_yaml", "read_yaml", "rules", "save_config", "show", "validate"]
