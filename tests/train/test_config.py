import pytest

from contrastkit.errors import ConfigError
from contrastkit.train.config import TrainConfig, load_config, parse_override


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_load_with_overrides(tmp_path):
    data = write(tmp_path, "pairs.jsonl", '{"anchor": "a", "positive": "b"}\n')
    y = write(tmp_path, "c.yaml", f"data: {data}\nbatch_size: 64\nmini_batch_size: 16\nlr: 3.0e-5\n")
    t = write(tmp_path, "c.toml", f'data = "{data}"\nbatch_size = 64\nmini_batch_size = 16\nlr = 3e-5\n')
    for path in (y, t):
        config = load_config(path, {"epochs": 2})
        assert (config.batch_size, config.mini_batch_size, config.lr, config.epochs) == (64, 16, 3e-5, 2)


@pytest.mark.parametrize("text, message", [
    ("data: {data}\nlr_rate: 0.1\n", "c.yaml: unknown key 'lr_rate' (did you mean 'lr'?)"),
    ("data: {data}\nbatch_size: big\n", "c.yaml: key 'batch_size' must be int; got str ('big')"),
    ("data: {data}\nbf16: 1\n", "c.yaml: key 'bf16' must be bool or null; got int (1)"),
    ("data: {data}/missing.jsonl\n", "c.yaml: data file '{data}/missing.jsonl' does not exist"),
    ("data: {data}\nbatch_size: 8\nmini_batch_size: 32\n",
     "c.yaml: batch_size (8) is smaller than mini_batch_size (32)"),
    ("data: {data}\nloss: hinge\n", "c.yaml: loss must be one of infonce, contrastive, triplet; got 'hinge'"),
    ("data: {data}\nloss: triplet\n", "num_hard_negatives = 1"),
    ("data: {data}\nloss: contrastive\n", "the contrastive loss learns from dissimilar pairs"),
    ("data: {data}\ntemperature: 0\n", "temperature must be > 0"),
    ("- a\n- b\n", "c.yaml: expected a mapping of keys to values"),
    ("data: [unclosed\n", "c.yaml: line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("lr: 1\n  bad: : x\n", "c.yaml: line 2, column 6: mapping values are not allowed here"),
    ("data: {data}\ntensorboard: true\n", "tensorboard = true needs the tensorboard package"),
    ("data: [{data}, {data}/gone.jsonl]\n", "c.yaml: data file '{data}/gone.jsonl' does not exist"),
    ("data: [{data}, 3]\n", "c.yaml: data must be a path or a list of paths; got ["),
    ("data: {{a: 1}}\n", "c.yaml: key 'data' must be str or list; got dict"),
    ("data: {data}\ngroup_by_source: maybe\n", "c.yaml: key 'group_by_source' must be bool; got str"),
    ("data: {data}\nattention_dropout: 1.5\n", "c.yaml: attention_dropout must be in [0, 1) (or null); got 1.5"),
    ("data: {data}\ncheckpoint_every: 0\n", "c.yaml: checkpoint_every must be at least 1 (or null); got 0"),
    # settings the triplet and contrastive losses would ignore
    ("data: {data}\nloss: triplet\nnum_hard_negatives: 1\nsimilarity: dot\n", "works on a distance"),
    ("data: {data}\nloss: contrastive\nnum_hard_negatives: 1\nlearnable_temperature: true\n",
     "learnable_temperature applies to the infonce loss only; the contrastive loss would ignore it"),
    ("data: {data}\nloss: triplet\nnum_hard_negatives: 1\ntemperature: 0.1\n", "temperature applies to the infonce"),
    ("data: {data}\nloss: triplet\nnum_hard_negatives: 1\nsymmetric: true\n", "symmetric applies to the infonce"),
    ("data: {data}\nloss: triplet\nnum_hard_negatives: 1\nmask_margin: 0.1\n", "mask_margin applies to the infonce"),
    ("data: {data}\nrefill_epochs: true\ndrop_last: false\n", "refill_epochs tops epochs up with full batches"),
    ("data: {data}\nseed: -1\n", "c.yaml: seed must be in [0, 2**63); got -1"),
    ("data: {data}\nseed: 18446744073709551616\n", "seed must be in [0, 2**63)"),
])
def test_bad_configs_are_refused_before_training(tmp_path, monkeypatch, text, message):
    import importlib.util

    find_spec = importlib.util.find_spec  # whether or not tensorboard is installed here
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    path = write(tmp_path, "c.yaml", text.format(data=tmp_path))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message.format(data=tmp_path) in str(err.value)


def test_a_toml_parse_error_and_a_file_not_in_utf8_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c.toml: cannot parse: .*line 1"):
        load_config(write(tmp_path, "c.toml", "data = \n"))
    (tmp_path / "l.yaml").write_bytes("data: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="l.yaml: not UTF-8 text"):
        load_config(tmp_path / "l.yaml")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=f"config file '{tmp_path}' is a folder"):
        load_config(tmp_path)


def test_overrides_are_typed_like_yaml():
    assert parse_override("batch_size=128") == ("batch_size", 128)
    assert parse_override("bf16=true") == ("bf16", True)
    assert parse_override("mini_batch_size=null") == ("mini_batch_size", None)
    assert parse_override("model=runs/x") == ("model", "runs/x")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("batch_size")


def test_int_is_accepted_for_float():
    config = TrainConfig(data="x", lr=1).validate(check_files=False)
    assert isinstance(config.lr, float)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    data = write(tmp_path, "pairs.jsonl", '{"anchor": "a", "positive": "b"}\n')
    path = write(tmp_path, "c.yaml", f"data: {data}\nlr: 1e-3\n")
    assert load_config(path).lr == 1e-3
    assert load_config(path, dict([parse_override("lr=5e-5")])).lr == 5e-5


@pytest.mark.parametrize("override, message", [
    ("lr=inf", "lr must be a finite number; got inf"),
    ("lr=.inf", "lr must be a finite number; got inf"),
    ("weight_decay=nan", "weight_decay must be a finite number; got nan"),
    ("temperature=inf", "temperature must be a finite number; got inf"),
    ("margin=nan", "margin must be a finite number; got nan"),
    ("mask_margin=-inf", "mask_margin must be a finite number; got -inf"),
    ("max_grad_norm=inf", "max_grad_norm must be a finite number; got inf"),
    ("dist_timeout_s=inf", "dist_timeout_s must be a finite number; got inf"),
    ("weight_decay=-1", "weight_decay must be >= 0; got -1.0"),
    ("max_grad_norm=-1", "max_grad_norm must be > 0 (or null: no clipping); got -1.0"),
    ("max_grad_norm=0", "max_grad_norm must be > 0 (or null: no clipping); got 0.0"),
    ("dist_timeout_s=0", "dist_timeout_s must be > 0; got 0.0"),
])
def test_non_finite_and_negative_floats_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, dict([parse_override(override)]), check_files=False)
    assert str(err.value) == f"config: {message}"


def test_contrastive_margin_nan_is_refused_from_a_file(tmp_path):
    data = write(tmp_path, "pairs.jsonl", '{"anchor": "a", "positive": "b"}\n')
    path = write(tmp_path, "c.yaml", f"data: {data}\nloss: contrastive\nmargin: .nan\n")
    with pytest.raises(ConfigError, match=r"c.yaml: margin must be a finite number; got nan"):
        load_config(path)


def test_unknown_metric_for_best_is_refused_with_what_is_valid():
    with pytest.raises(ConfigError) as err:
        TrainConfig(data="x", eval_data="b", metric_for_best="foo@10").validate(check_files=False)
    message = str(err.value)
    assert "got 'foo@10'" in message and "\n" not in message
    for part in ("ndcg", "mrr", "map", "recall", "precision", "accuracy", "1, 3, 5, 10, 100"):
        assert part in message
    for sts in ("spearman", "pearson"):  # eval_data is a BEIR folder: its evaluation reports no correlation
        with pytest.raises(ConfigError, match=f"got '{sts}'"):
            TrainConfig(data="x", eval_data="b", metric_for_best=sts).validate(check_files=False)
    with pytest.raises(ConfigError, match="got 'ndcg@7'"):  # a cut-off the training evaluator does not compute
        TrainConfig(data="x", eval_data="b", metric_for_best="ndcg@7").validate(check_files=False)
    # without eval_data the evaluator is the caller's own (Trainer(evaluator=...)): its names are its own
    assert TrainConfig(data="x", metric_for_best="mine").validate(check_files=False).metric_for_best == "mine"


def test_every_metric_the_training_evaluator_reports_is_a_valid_metric_for_best(tiny_encoder, tmp_path):
    from _support import make_beir

    from contrastkit.train.config import best_metric_names
    from contrastkit.train.evaluation import RetrievalEvaluator

    reported = RetrievalEvaluator.from_folder(make_beir(tmp_path / "beir"))(tiny_encoder)
    assert "ndcg@10" in reported
    assert set(reported) == set(best_metric_names())
    for name in reported:
        config = TrainConfig(data="x", eval_data="b", metric_for_best=name)
        assert config.validate(check_files=False).metric_for_best == name


def test_valid_float_settings_are_kept():
    config = TrainConfig(data="x", weight_decay=0, max_grad_norm=None, mask_margin=0.1).validate(check_files=False)
    assert (config.weight_decay, config.max_grad_norm, config.mask_margin) == (0.0, None, 0.1)
    defaults = TrainConfig(data="x").validate(check_files=False)
    assert (defaults.weight_decay, defaults.max_grad_norm, defaults.metric_for_best) == (0.01, 1.0, "ndcg@10")


def test_docs_list_every_setting_with_its_default():
    """docs/training.md's table is the one place a user finds every key (max_steps and eval_split were
    in no doc): each field there once, with the default the code has."""
    import dataclasses
    import re
    from pathlib import Path

    from contrastkit.train import TrainConfig

    text = (Path(__file__).parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, flags=re.M))
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert list(rows) == list(fields)
    for name, default in fields.items():
        shown = rows[name].strip()
        expected = ("(none)" if default == "" else "null" if default is None else
                    f"`{str(default).lower()}`" if isinstance(default, bool) else f"`{default}`")
        assert shown == expected, (name, shown, expected)
