"""Configs: mdistiller's keys and defaults, YAML files, dotted command-line overrides with type
coercion, clear errors (unknown keys with close matches, wrong types), and the shipped configs."""
import os

import pytest
import yaml

from dtkd.config import (CONFIG_DIR, CfgNode, ConfigError, get_default_config, load_config,
                         resolve_config_path, shipped_configs)

# The 11 CIFAR-100 teacher/student pairs of the DTKD paper, with the per-pair values of the
# official configs (JinYu1998/DTKD configs/cifar100/dtkd/*.yaml; a pair without a DTKD section
# there uses the official cfg.py defaults ALPHA 3.0, BETA 1.0).
OFFICIAL_DTKD = {
    # pair: (teacher, student, LR, ALPHA, BETA)
    "res32x4_res8x4": ("resnet32x4", "resnet8x4", 0.05, 3.0, 1.0),
    "res56_res20": ("resnet56", "resnet20", 0.05, 1.0, 0.5),
    "res110_res32": ("resnet110", "resnet32", 0.05, 1.0, 0.5),
    "wrn40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2", 0.05, 3.0, 1.0),
    "wrn40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1", 0.05, 1.0, 0.5),
    "vgg13_vgg8": ("vgg13", "vgg8", 0.05, 3.0, 1.0),
    "res32x4_shuv1": ("resnet32x4", "ShuffleV1", 0.01, 3.0, 1.0),
    "res32x4_shuv2": ("resnet32x4", "ShuffleV2", 0.01, 3.0, 1.0),
    "wrn40_2_shuv1": ("wrn_40_2", "ShuffleV1", 0.01, 2.0, 0.5),
    "res50_mv2": ("ResNet50", "MobileNetV2", 0.01, 3.0, 2.0),
    "vgg13_mv2": ("vgg13", "MobileNetV2", 0.01, 3.0, 1.0),
}
# mdistiller configs/cifar100/dkd/*.yaml BETA (8.0, the cfg.py default, where unset).
MDISTILLER_DKD_BETA = {"res56_res20": 2.0, "res110_res32": 2.0, "wrn40_2_wrn_16_2": 6.0,
                       "wrn40_2_wrn_40_1": 6.0, "vgg13_vgg8": 6.0, "vgg13_mv2": 6.0}


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# Defaults and parsing

def test_defaults_are_mdistillers_and_official_dtkds():
    cfg = get_default_config()
    assert cfg.SOLVER.LR_DECAY_STAGES == [150, 180, 210]
    assert (cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.EPOCHS, cfg.SOLVER.LR) == (64, 240, 0.05)
    assert (cfg.SOLVER.LR_DECAY_RATE, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MOMENTUM) == (0.1, 1e-4, 0.9)
    assert (cfg.KD.TEMPERATURE, cfg.KD.LOSS.CE_WEIGHT, cfg.KD.LOSS.KD_WEIGHT) == (4, 0.1, 0.9)
    assert (cfg.DKD.CE_WEIGHT, cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.T, cfg.DKD.WARMUP) == (1, 1, 8, 4, 20)
    assert (cfg.DTKD.ALPHA, cfg.DTKD.BETA, cfg.DTKD.CE_WEIGHT, cfg.DTKD.T, cfg.DTKD.WARMUP) == (3, 1, 1, 4, 20)
    assert cfg.DISTILLER.TYPE == "NONE" and cfg.SOLVER.SCHEDULE == "step"


def test_defaults_are_fresh_copies():
    a = get_default_config()
    a.SOLVER.LR_DECAY_STAGES.append(999)
    a.SOLVER.LR = 1.0
    b = get_default_config()
    assert b.SOLVER.LR_DECAY_STAGES == [150, 180, 210] and b.SOLVER.LR == 0.05


def test_yaml_file_then_overrides_are_applied_in_order(tmp_path):
    path = write(tmp_path, "DISTILLER:\n  TYPE: DTKD\nSOLVER:\n  EPOCHS: 100\n  LR: 0.01\n"
                           "DTKD:\n  ALPHA: 2\n")
    cfg = load_config(path, ["SOLVER.EPOCHS", "10", "DTKD.BETA", "0.5"])
    assert cfg.DISTILLER.TYPE == "DTKD"
    assert cfg.SOLVER.EPOCHS == 10 and cfg.SOLVER.LR == 0.01
    assert cfg.DTKD.ALPHA == 2.0 and isinstance(cfg.DTKD.ALPHA, float)  # int in YAML -> float key
    assert cfg.DTKD.BETA == 0.5
    assert cfg.SOLVER.MOMENTUM == 0.9  # untouched default


@pytest.mark.parametrize("key, text, expected", [
    ("SOLVER.EPOCHS", "12", 12),
    ("SOLVER.LR", "1e-3", 1e-3),           # PyYAML alone reads this as a string
    ("SOLVER.LR", "2", 2.0),
    ("SOLVER.NESTEROV", "true", True),
    ("SOLVER.LR_DECAY_STAGES", "[3, 4]", [3, 4]),
    ("SOLVER.LR_DECAY_STAGES", "5", [5]),
    ("SOLVER.LR_DECAY_STAGES", "[]", []),
    ("EXPERIMENT.TAG", "run,7", "run,7"),
    ("EXPERIMENT.NAME", "42", "42"),
    ("SOLVER.SCHEDULE", "cosine", "cosine"),
    ("DISTILLER.TEACHER_CHECKPOINT", "/tmp/t.npz", "/tmp/t.npz"),
    # YAML 1.1 reads `off` as false: a choice spelled so is meant
    ("DISTILLER.TEACHER_CACHE", "off", "off"),
    ("DISTILLER.TEACHER_CACHE", "Off", "off"),
])
def test_overrides_are_coerced_to_the_defaults_type(key, text, expected):
    cfg = load_config(None, [key, text])
    value = cfg
    for part in key.split("."):
        value = value[part]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key, text, words", [
    ("SOLVER.EPOCHS", "1.5", ["SOLVER.EPOCHS", "integer", "1.5"]),
    ("SOLVER.EPOCHS", "ten", ["SOLVER.EPOCHS", "integer", "ten"]),
    ("SOLVER.LR", "fast", ["SOLVER.LR", "number", "fast"]),
    ("SOLVER.NESTEROV", "1", ["SOLVER.NESTEROV", "true or false"]),
    ("SOLVER.LR_DECAY_STAGES", "[3, x]", ["SOLVER.LR_DECAY_STAGES[1]", "integer"]),
    ("SOLVER.LR_DECAY_STAGES", "{a: 1}", ["SOLVER.LR_DECAY_STAGES", "list"]),
    ("SOLVER", "3", ["SOLVER", "group of keys"]),
    ("SOLVER.SCHEDULE", "cosin", ["SOLVER.SCHEDULE", "'step', 'cosine'", "did you mean 'cosine'"]),
    ("DISTILLER.TYPE", "DTKDD", ["DISTILLER.TYPE", "did you mean 'DTKD'"]),
    ("DISTILLER.TEACHER_CACHE", "yes", ["DISTILLER.TEACHER_CACHE", "a string"]),
    ("EXPERIMENT.NAME", "off", ["EXPERIMENT.NAME", "a string"]),
])
def test_override_type_errors_name_the_key_and_expected_type(key, text, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [key, text])
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("key, suggestion", [
    ("SOLVER.EPOCH", "SOLVER.EPOCHS"),
    ("SOLVER.LR_DECAY_STAGE", "SOLVER.LR_DECAY_STAGES"),
    ("DTKD.ALPH", "DTKD.ALPHA"),
    ("dtkd.alpha", "DTKD"),
    ("SOLVR.LR", "SOLVER"),
    ("KD.LOSS.KD_WIEGHT", "KD.LOSS.KD_WEIGHT"),
])
def test_unknown_override_key_lists_close_matches(key, suggestion):
    with pytest.raises(ConfigError, match="unknown config key") as err:
        load_config(None, [key, "1"])
    assert f"did you mean: {suggestion}" in str(err.value) or f", {suggestion}" in str(err.value)


def test_unknown_key_in_yaml_file_names_the_file_and_close_matches(tmp_path):
    path = write(tmp_path, "SOLVER:\n  BATCHSIZE: 32\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "SOLVER.BATCHSIZE" in msg and "SOLVER.BATCH_SIZE" in msg


def test_unknown_key_with_nothing_close_lists_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ZZZZZZ", "1"])
    assert "did you mean" not in str(err.value) and "SOLVER" in str(err.value)


@pytest.mark.parametrize("text, words", [
    ("- just\n- a list\n", ["mapping", "list"]),
    ("SOLVER: [unclosed\n", ["not valid YAML"]),
    ("SOLVER: 3\n", ["SOLVER", "group of keys"]),
    ("SOLVER:\n  EPOCHS: 2.5\n", ["SOLVER.EPOCHS", "integer"]),
])
def test_malformed_yaml_files_raise_config_errors(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for word in words:
        assert word in str(err.value)


def test_empty_yaml_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing\n")) == get_default_config()


def test_odd_number_of_override_items_is_an_error():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.EPOCHS"])


def test_missing_config_file_suggests_shipped_names():
    with pytest.raises(ConfigError, match="not found") as err:
        resolve_config_path("cifar100/dtkd/res32x4_res8x.yaml")
    assert "cifar100/dtkd/res32x4_res8x4.yaml" in str(err.value)


def test_attribute_access_to_a_missing_key_suggests_close_matches():
    cfg = get_default_config()
    with pytest.raises(AttributeError, match="did you mean: EPOCHS"):
        cfg.SOLVER.EPOCH


def test_dump_round_trips_through_load(tmp_path):
    cfg = load_config(None, ["SOLVER.LR_DECAY_STAGES", "[3]", "DTKD.VARIANT", "tckd", "EXPERIMENT.TAG", "a,b"])
    path = write(tmp_path, cfg.dump())
    assert load_config(path) == cfg
    assert isinstance(yaml.safe_load(cfg.dump()), dict)


def test_cfgnode_nested_dicts_are_nodes():
    node = CfgNode({"A": {"B": {"C": 1}}})
    assert node.A.B.C == 1 and isinstance(node.A.B, CfgNode)


# ----------------------------------------------------------------------------------------------
# Shipped configs

def test_all_shipped_configs_load():
    names = shipped_configs()
    assert names, f"no configs under {CONFIG_DIR}"
    for name in names:
        cfg = load_config(name)
        assert cfg.SOLVER.EPOCHS >= 1, name


@pytest.mark.parametrize("method", ["dtkd", "dkd", "kd", "vanilla"])
def test_every_cifar100_pair_ships_for_every_method(method):
    shipped = {n for n in shipped_configs() if n.startswith(f"cifar100/{method}/")}
    assert shipped == {f"cifar100/{method}/{pair}.yaml" for pair in OFFICIAL_DTKD}


@pytest.mark.parametrize("pair", sorted(OFFICIAL_DTKD))
def test_cifar100_configs_carry_the_official_per_pair_values(pair):
    teacher, student, lr, alpha, beta = OFFICIAL_DTKD[pair]
    dtkd_cfg = load_config(f"cifar100/dtkd/{pair}.yaml")
    assert (dtkd_cfg.DISTILLER.TYPE, dtkd_cfg.DISTILLER.TEACHER, dtkd_cfg.DISTILLER.STUDENT) == ("DTKD", teacher, student)
    assert (dtkd_cfg.SOLVER.LR, dtkd_cfg.DTKD.ALPHA, dtkd_cfg.DTKD.BETA) == (lr, alpha, beta)
    assert (dtkd_cfg.DTKD.CE_WEIGHT, dtkd_cfg.DTKD.T, dtkd_cfg.DTKD.WARMUP) == (1.0, 4.0, 20)
    dkd_cfg = load_config(f"cifar100/dkd/{pair}.yaml")
    assert dkd_cfg.DISTILLER.TYPE == "DKD" and dkd_cfg.DKD.BETA == MDISTILLER_DKD_BETA.get(pair, 8.0)
    for method, kind in (("kd", "KD"), ("vanilla", "NONE"), ("dkd", "DKD")):
        cfg = load_config(f"cifar100/{method}/{pair}.yaml")
        assert cfg.DISTILLER.TYPE == kind
        assert (cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT, cfg.SOLVER.LR) == (teacher, student, lr)
        assert (cfg.SOLVER.EPOCHS, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.WEIGHT_DECAY) == (240, 64, 5e-4)
        assert cfg.SOLVER.LR_DECAY_STAGES == [150, 180, 210]


def test_fashion_mnist_configs_are_small_and_chain_teacher_to_students():
    teacher = load_config("fashion_mnist/teacher.yaml")
    out = f"{teacher.LOG.PREFIX}/{teacher.EXPERIMENT.PROJECT}/{teacher.EXPERIMENT.NAME}/model_best.npz"
    # a shipped config's relative path means the current directory, where the teacher run writes
    out = os.path.normpath(os.path.join(os.getcwd(), out))
    for method, kind in (("kd", "KD"), ("dkd", "DKD"), ("dtkd", "DTKD"), ("vanilla", "NONE")):
        cfg = load_config(f"fashion_mnist/{method}.yaml")
        assert cfg.DATASET.TYPE == "fashion_mnist" and cfg.DISTILLER.TYPE == kind
        assert cfg.SOLVER.EPOCHS <= 10 and 0 < cfg.DATASET.SUBSET <= 20000
        assert cfg.DISTILLER.TEACHER == teacher.DISTILLER.STUDENT
        if kind != "NONE":
            assert cfg.DISTILLER.TEACHER_CHECKPOINT == out


def test_attribute_assignment_is_checked_like_an_override():
    cfg = get_default_config()
    cfg.SOLVER.EPOCHS = 12.0
    assert cfg.SOLVER.EPOCHS == 12 and isinstance(cfg.SOLVER.EPOCHS, int)
    with pytest.raises(AttributeError, match="did you mean: EPOCHS"):
        cfg.SOLVER.EPOCH = 3
    with pytest.raises(ConfigError, match="EPOCHS expects an integer"):
        cfg.SOLVER.EPOCHS = "many"
    with pytest.raises(AttributeError, match="group of keys"):
        cfg.SOLVER = 3


# The official DTKD repository's YAML for one pair, verbatim (JinYu1998/DTKD
# configs/cifar100/dtkd/res110_res32.yaml): mdistiller-format files load unchanged.
OFFICIAL_RES110_RES32 = """EXPERIMENT:
  NAME: ""
  TAG: "dtkd,res110,res32"
  PROJECT: "DTKD_Final"
DISTILLER:
  TYPE: "DTKD"
  TEACHER: "resnet110"
  STUDENT: "resnet32"
SOLVER:
  BATCH_SIZE: 64
  EPOCHS: 240
  LR: 0.05
  LR_DECAY_STAGES: [150, 180, 210]
  LR_DECAY_RATE: 0.1
  WEIGHT_DECAY: 0.0005
  MOMENTUM: 0.9
  TYPE: "SGD"
DTKD:
  ALPHA: 1.0
  BETA: 0.5"""


def test_official_mdistiller_format_yaml_loads_unchanged(tmp_path):
    official = load_config(write(tmp_path, OFFICIAL_RES110_RES32))
    shipped = load_config("cifar100/dtkd/res110_res32.yaml")
    for group in ("EXPERIMENT", "DISTILLER", "SOLVER", "DTKD"):
        for key, value in official[group].items():
            if key != "TEACHER_CHECKPOINT":
                assert shipped[group][key] == value, f"{group}.{key}"
