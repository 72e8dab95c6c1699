"""Property tests for the user-facing readers: the config loader and the label/prompt parsers.

The contract under test: any input either succeeds with a well-formed result or raises the
project's own error (ConfigError / LabelError) with a one-line message.  Any other exception
(KeyError, TypeError, RecursionError, UnicodeDecodeError, OverflowError, a yaml error ...)
would reach the user as a traceback instead of ``error: ...``, so it fails these tests.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from synth.config import Config, ConfigError, config_to_dict, load_config, rules, validate
from synth.labels import LabelError, LabelSchema

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def assert_one_line(err: Exception) -> None:
    """The CLI prints ``error: <message>``: the message must be one non-empty line."""
    msg = str(err)
    assert msg.strip(), f"empty message from {type(err).__name__}"
    assert len(msg.splitlines()) == 1 and "\n" not in msg, f"multi-line message: {msg!r}"
    assert len(msg) < 2000, f"message of {len(msg)} characters"


# ---------------------------------------------------------------------------
# The schema, read from the dataclasses so new keys are fuzzed too


def _schema(cls: type = Config, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted key -> annotation, for every leaf field of the config dataclasses."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(_schema(tp, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = tp
    return out


SCHEMA = _schema()
SECTIONS = sorted({k.split(".")[0] for k in SCHEMA} | {"model.vae", "model.unet", "model.text"})
KEYS = sorted(SCHEMA)

# scalars YAML can produce, including the awkward ones
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, 1, -1, 2**63, -(2**63), 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e308, 0.5, 1.0, 0.999999]),
    st.text(max_size=12),
    st.sampled_from(["no", "yes", "1e-4", "nan", ".inf", "-1", "{label}", "x {label} {y}", "a\nb", "", "null"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6) | st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=12)


def _near_valid(tp: typing.Any) -> st.SearchStrategy:
    """Values of (roughly) the annotated type, with out-of-range and boundary numbers."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.none(), *(_near_valid(a) for a in typing.get_args(tp) if a is not type(None)))
    if origin is list:
        return st.lists(_near_valid(typing.get_args(tp)[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(st.sampled_from(["normal", "pneumonia"]) | st.text(max_size=5), st.text(max_size=20),
                               max_size=3)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-3, 70) | st.sampled_from([0, -1, 2**63, 10**20])
    if tp is float:
        return st.floats(-2, 2) | st.sampled_from([0.0, 1.0, -1e-9, 1e308, float("nan"), float("inf"), "1e-4"])
    if tp is str:
        return st.sampled_from(["raise", "skip", "pixel", "vae", "cosine", "no", "bf16", "sdpa", "epsilon", "ot",
                                "ddim", "scaled_linear", "bridge", "chest x-ray, {label}", "{label}", "phantom"]) \
            | st.text(max_size=8)
    return values


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in SCHEMA:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _known_good() -> dict[str, list]:
    """Per key: its default, the values the shipped presets use and its documented choices."""
    good = {k: [v] for k, v in _flatten(config_to_dict(Config())).items()}
    presets = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "synth" / "presets").glob("*.yaml"))
    for p in presets:
        for k, v in _flatten(yaml.safe_load(p.read_text()) or {}).items():
            if k in good and v not in good[k]:
                good[k].append(v)
    for k, rule in rules():  # the choices declared next to the fields
        if rule["kind"] == "choice":
            good[k] += [c for c in rule["choices"] if c not in good[k]]
    return good


ROOT = Path(__file__).resolve().parents[2]
GOOD = _known_good()


def leaf_values(key: str) -> st.SearchStrategy:
    """Mostly values a user would write (so many configs load and the success side is checked),
    often typed but out-of-range ones, sometimes anything."""
    return st.integers(0, 19).flatmap(lambda r: st.sampled_from(GOOD[key]) if r < 10
                                      else _near_valid(SCHEMA[key]) if r < 17 else values)


@st.composite
def near_valid_configs(draw) -> dict:
    """A nested dict of real keys with plausible, typed-but-out-of-range or junk values, plus the odd junk key."""
    out: dict = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6, unique=True)):
        node = out
        *path, leaf = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = draw(leaf_values(key))
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.text(max_size=8) | st.sampled_from(["trian", "Train", "data.name"]))] = draw(values)
    return out


RAW_YAML = [
    "", "   \n", "# only a comment\n", "---\n", "--- 1\n--- 2\n", "[1, 2]\n", "42\n", "just text\n", "~\n",
    "train: !!python/object/apply:os.system ['echo pwned']\n",
    "data: !!python/name:os.system\n", "!!python/object:synth.config.Config {}\n",
    "train: {steps: 1}\ntrain: {steps: 2}\n",  # duplicate key
    "train:\n  lr: 1\n  lr: 2\n",
    "base: &b {steps: 3}\ntrain: *b\n", "train: &t {steps: 3}\nsample: *t\n",
    "train: {<<: {steps: 3}, lr: 0.1}\n",  # merge key
    "a: &a [*a]\n", "train: &a {lr: *a}\n",
    # deeper than PyYAML's recursive composer can go (about 330 levels at Python's default limit)
    "[" * 800 + "]" * 800 + "\n", "train: " + "{a: " * 800 + "1" + "}" * 800 + "\n",
    "train: {lr: " + "9" * 5000 + "}\n",  # past Python's int digit limit
    "train: {lr: " + "9" * 400 + "}\n", "train: {lr: .nan}\n", "train: {lr: -.inf}\n",
    "data: {name: 2024-01-01}\n", "data: {name: !!binary aGVsbG8=}\n", "data: !!set {a, b}\n",
    "labels: {prompts: {yes: x}}\n", "labels: {prompts: {null: x}}\n",
    "labels: {prompt_template: '{label} {view}'}\n", "labels: {prompt_template: '{label} }'}\n",
    "labels: {classes: [a, a]}\n", "labels: {classes: ['']}\n",
    "? [1, 2]\n: x\n", "{a: 1\n", "\ttrain: 1\n", "train:\n", "train: null\n", "\x00\n", "\ufefftrain: {steps: 2}\n",
]
raw_yaml_text = st.sampled_from(RAW_YAML) | st.text(max_size=60) | st.builds(
    lambda a, b: a + b, st.sampled_from(RAW_YAML), st.text(alphabet="{}[]:,&*!-?|>'\"# \n\tab1.", max_size=20))
raw_bytes = st.binary(max_size=40) | st.sampled_from([b"\xff\xfe\x00t", b"train: {steps: 1}\n\x80\x81", b"\xc3("])


def yaml_documents() -> st.SearchStrategy[bytes]:
    """Config files: dumped random/near-valid data, hand-written tricky YAML, raw bytes."""
    dumped = st.one_of(near_valid_configs(), st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=6), values,
                                                             max_size=4), values)
    return st.one_of(dumped.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
                     raw_yaml_text.map(lambda t: t.encode("utf-8", "surrogatepass")), raw_bytes)


def _flow(value) -> str:
    """One-line YAML for an override value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


override_keys = st.one_of(
    st.sampled_from(KEYS), st.sampled_from(SECTIONS),
    st.sampled_from(KEYS).map(lambda k: k + ".deeper"),  # a dotted path into a scalar
    st.sampled_from(["", " ", ".", "..", "train.", ".lr", "train..lr", "labels.prompts.normal", "trian.lr", "=",
                     "labels.prompts.a\nb"]),
    st.text(max_size=10),
)
override_values = st.one_of(
    st.sampled_from(KEYS).flatmap(lambda k: _near_valid(SCHEMA[k])).map(_flow),
    values.map(_flow), st.text(max_size=15),
    st.sampled_from(["", "[", "{a: 1", "!!python/object/apply:os.system ['true']", "[" * 800 + "]" * 800, "9" * 5000,
                     "&a [*a]", "{a: 1, a: 2}", "nan", "1e999", "-0", "0x10", "no"]),
)
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys, override_values),
                               st.text(max_size=10)), max_size=4)


def _check_types(obj, cls: type = Config, prefix: str = "") -> None:
    """Every field holds its annotated type; every float is finite (NaN passes every '<= 0' check)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        v, tp, key = getattr(obj, f.name), hints[f.name], prefix + f.name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            _check_types(v, tp, key + ".")
            continue
        _check_value(v, tp, key)


def _check_value(v, tp, key: str) -> None:
    """``v`` is of the (possibly optional, list or dict) annotation ``tp``; floats are finite."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            assert type(None) in typing.get_args(tp), key
            return
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) > 1:  # e.g. data.channels: int | str
            assert any(isinstance(v, a) for a in options), key
            return
        (tp,) = options
        origin = typing.get_origin(tp)
    if origin is list:
        assert isinstance(v, list), key
        for x in v:
            _check_value(x, typing.get_args(tp)[0], key + "[]")
    elif origin is dict:
        assert isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()), key
    elif tp is float:
        assert type(v) is float and math.isfinite(v), (key, v)
    elif tp is int:
        assert type(v) is int, (key, v)
    else:
        assert type(v) is tp, (key, v)


def check_load(path, items, tmp: Path):
    """The property: a valid, well-typed Config that survives a save/load round trip, or a one-line ConfigError."""
    try:
        cfg = load_config(path, items)
    except ConfigError as e:
        assert_one_line(e)
        return None
    validate(cfg)  # the loader's own checks hold for what it returns
    _check_types(cfg)
    out = tmp / "roundtrip.yaml"
    # what save_config writes, without its fsync
    out.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    assert load_config(out) == cfg, "a saved config does not reload to the same config"
    return cfg


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


@SETTINGS
@given(doc=yaml_documents(), items=overrides)
@example(doc=b"train: {lr: 1}\n", items=["train.lr=" + "9" * 400])
@example(doc=b"\xff\xfe", items=[])
def test_any_yaml_file_and_overrides_load_or_fail_in_one_line(scratch, doc, items):
    p = scratch / "config.yaml"
    p.write_bytes(doc)
    check_load(p, items, scratch)


near_valid_overrides = st.lists(st.sampled_from(KEYS).flatmap(
    lambda k: leaf_values(k).map(lambda v: f"{k}={_flow(v)}")), max_size=3)


@SETTINGS
@given(values=near_valid_configs(), items=near_valid_overrides)
def test_near_valid_configs_load_valid_or_fail_in_one_line(scratch, values, items):
    p = scratch / "near.yaml"
    p.write_text(yaml.safe_dump(values, allow_unicode=True))
    check_load(p, items, scratch)


@settings(SETTINGS, max_examples=100)
@given(items=st.lists(st.sampled_from(KEYS).flatmap(lambda k: _near_valid(SCHEMA[k]).map(lambda v: f"{k}={_flow(v)}")),
                      min_size=1, max_size=6))
def test_overrides_alone_on_defaults(scratch, items):
    check_load(None, items, scratch)


@pytest.mark.parametrize("where", ["missing", "directory", "empty-name", "dangling-link"])
def test_unusable_config_paths_fail_in_one_line(tmp_path, where):
    p = {"missing": tmp_path / "nope.yaml", "directory": tmp_path, "empty-name": ""}.get(where)
    if where == "dangling-link":
        p = tmp_path / "link.yaml"
        p.symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert_one_line(e.value)


def test_unsafe_tags_never_run(tmp_path):
    marker = tmp_path / "ran"
    for doc in (f"train: !!python/object/apply:os.system ['touch {marker}']\n",
                f"train: !!python/object/new:os.system ['touch {marker}']\n"):
        (tmp_path / "c.yaml").write_text(doc)
        with pytest.raises(ConfigError):
            load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError):  # an override's unsafe tag is plain text, refused by the type check
        load_config(None, [f"train.steps=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_defaults_are_in_the_fuzzed_schema():
    # the generators above read the schema from the dataclasses: a sanity check that they see it
    assert {"train.lr", "data.seed", "model.unet.block_out_channels", "labels.prompts", "eval.fractions"} <= set(KEYS)
    assert config_to_dict(load_config())["train"]["lr"] > 0


# ---------------------------------------------------------------------------
# Labels: schema look-up, schema construction, label weight specs, prompt files

NAMES = ["normal", "pneumonia", "Normal", "covid-19", "class_0", "0", "1", "12", "ß", "SS", "é", "a b", "x=y", "a,b",
         "²", "١", " padded "]
names = st.sampled_from(NAMES) | st.text(max_size=6)
schemas = st.lists(names.filter(str.strip), min_size=1, max_size=5, unique=True).flatmap(
    lambda cs: st.builds(LabelSchema, st.just(cs),
                         prompt_template=st.sampled_from(["chest x-ray, {label}", "{label}"])))
SCHEMA2 = LabelSchema(["normal", "pneumonia"])


def _try_schema(classes, template="chest x-ray, {label}", prompts=None):
    try:
        return LabelSchema(classes, prompt_template=template, prompts=prompts or {})
    except LabelError as e:
        assert_one_line(e)
        return None


@SETTINGS
@given(classes=st.lists(names | st.integers(0, 3) | st.none(), max_size=5) | st.text(max_size=4),
       template=st.sampled_from(["chest x-ray, {label}", "{label}", "{label} {view}", "{label} }", "{0}", "{label.x}",
                                 "{label!z}", "{{label}}", "{label:>5}"]) | st.text(max_size=10),
       prompts=st.dictionaries(names, st.text(max_size=8) | st.integers(), max_size=2))
def test_schema_construction_is_valid_or_one_line_error(classes, template, prompts):
    s = _try_schema(classes, template, prompts)
    if s is not None:
        assert s.num_classes == len(s.classes) == len(set(s.classes)) > 0
        for k in range(s.num_classes):
            assert isinstance(s.prompt_for(k), str)  # every prompt can be made
        assert LabelSchema.from_json(s.to_json()) == s


@SETTINGS
@given(schema=schemas, name=names | st.text(max_size=8) | st.integers(0, 40).map(str) | st.just("9" * 5000))
def test_label_lookup_finds_a_class_or_fails_in_one_line(schema, name):
    try:
        k = schema.index(name)
    except LabelError as e:
        assert_one_line(e)
        return
    assert 0 <= k < schema.num_classes
    c = schema.classes[k]
    # the name is the class (up to case), or the class index written as ASCII digits
    assert c.casefold() == name.casefold() or (name.isascii() and name.isdigit() and int(name) == k)


@SETTINGS
@given(d=st.dictionaries(st.sampled_from(["classes", "domains", "prompt_template", "prompts", "junk"])
                         | st.text(max_size=4), values, max_size=4) | values)
def test_schema_from_json_is_valid_or_one_line_error(d):
    try:
        s = LabelSchema.from_json(d)
    except LabelError as e:
        assert_one_line(e)
        return
    assert s.num_classes > 0 and all(isinstance(c, str) for c in s.classes)


# label weight specs as typed after --labels
weight_texts = st.one_of(
    st.floats(min_value=0, max_value=1e300).map(repr), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 5).map(str),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "-0", "1e-400", "0.5=1", "1_0", "abc", "0x1", "½", "1,5", "+1"]),
)
spec_items = st.one_of(
    st.builds(lambda n, w: f"{n}={w}", names | st.sampled_from(["", "normal", "NORMAL", "pneumonia", "0", "1", "2"]),
              weight_texts),
    names, st.text(max_size=6))
label_specs = st.one_of(
    st.lists(spec_items, max_size=5).map(",".join),
    st.lists(spec_items, max_size=5).flatmap(lambda xs: st.sampled_from([" , ", ",,", ", ", ";", "\n,"]).map(
        lambda sep: sep.join(xs))),
    st.lists(st.sampled_from(list("normalpneumia=,.0123456789e-+ \n") + ["nan", "inf", "normal", "pneumonia"]),
             max_size=20).map("".join),
    st.text(max_size=30))


def _bulk():
    return pytest.importorskip("synth.samplers.bulk")


@SETTINGS
@given(schema=schemas | st.just(SCHEMA2), spec=label_specs)
@example(schema=SCHEMA2, spec="normal=²")
@example(schema=SCHEMA2, spec="²=1")
@example(schema=SCHEMA2, spec="normal=0.5,\npneumonia=0.5,normal=1")
def test_label_specs_give_normalised_weights_or_one_line_error(schema, spec):
    bulk = _bulk()
    try:
        parsed = bulk.parse_label_spec(spec, schema, log=lambda m: None)
    except LabelError as e:
        assert_one_line(e)
        return
    ks = [k for k, _ in parsed.labels]
    ws = [w for _, w in parsed.labels]
    assert parsed.labels and not parsed.lines
    assert ks == sorted(set(ks)) and all(isinstance(k, int) and 0 <= k < schema.num_classes for k in ks)
    assert all(math.isfinite(w) and w > 0 for w in ws), parsed.labels
    assert math.isclose(sum(ws), 1.0, rel_tol=1e-9), parsed.labels


def test_label_weights_whose_sum_overflows_are_refused():
    bulk = _bulk()
    try:
        parsed = bulk.parse_label_spec("normal=1e308,pneumonia=1e308", SCHEMA2, log=lambda m: None)
    except LabelError:
        return
    assert math.isclose(sum(w for _, w in parsed.labels), 1.0), parsed.labels


prompt_lines = st.one_of(names, st.text(max_size=20),
                         st.builds(lambda n, t: f"label={n}:{t}", names | st.sampled_from(["normal", "PNEUMONIA", "7"]),
                                   st.text(max_size=10)),
                         st.sampled_from(["", "#", "# comment", "label=", "label=:", "LABEL=normal", "label=normal:",
                                          "   ", "\r", "\x85", "\u2028"]))


@SETTINGS
@given(schema=schemas | st.just(SCHEMA2), lines=st.lists(prompt_lines, max_size=6),
       sep=st.sampled_from(["\n", "\r\n", "\r"]))
def test_prompt_files_give_conditions_or_one_line_error(scratch, schema, lines, sep):
    bulk = _bulk()
    p = scratch / "prompts.txt"
    p.write_text(sep.join(lines), encoding="utf-8", newline="")
    try:
        spec = bulk.parse_prompt_file(p, schema)
    except LabelError as e:
        assert_one_line(e)
        return
    assert spec.lines and not spec.labels
    for k, prompt in spec.lines:
        assert k is None or 0 <= k < schema.num_classes
        assert isinstance(prompt, str) and prompt.strip() and len(prompt.splitlines()) == 1


def test_non_utf8_prompt_file_is_a_label_error(tmp_path):
    bulk = _bulk()
    p = tmp_path / "prompts.txt"
    p.write_bytes(b"normal\n\xff\xfe\n")
    with pytest.raises(LabelError):
        bulk.parse_prompt_file(p, SCHEMA2)
