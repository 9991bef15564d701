"""Option files: schema validation with dotted key paths, --set overrides, shipped option files."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ddr_restore.train.entry import main as train_main
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.train.options import (
    OptionsError,
    apply_overrides,
    dump_options,
    load_options,
    parse_options,
    parse_override,
    resume_changes,
    validate_options,
)

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "opt_test",
    "model_type": "ImageRestorationModel",
    "num_gpu": 0,
    "manual_seed": 1,
    "datasets": {
        "train": {"name": "t", "type": "SyntheticMotionBlurDataset", "gt_size": 32, "batch_size_per_gpu": 2},
        "val": {"name": "v", "type": "SyntheticMotionBlurDataset", "length": 1},
    },
    "network_g": {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]},
    "train": {
        "optim_g": {"type": "AdamW", "lr": 1e-3, "betas": [0.9, 0.9]},
        "scheduler": {"type": "TrueCosineAnnealingLR", "T_max": 10, "eta_min": 1e-7},
        "total_iter": 10,
        "pixel_opt": {"type": "PSNRLoss", "loss_weight": 1.0},
    },
    "val": {"val_freq": 5, "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0}}},
    "logger": {"print_freq": 1, "save_checkpoint_freq": 5, "use_tb_logger": False},
}


def _errors(opt) -> str:
    with pytest.raises(OptionsError) as info:
        validate_options(opt)
    return str(info.value)


def test_valid_options_get_defaults_and_absolute_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = validate_options(BASE)
    assert out["train"]["warmup_iter"] == -1
    assert out["train"]["use_grad_clip"] is False and out["train"]["grad_clip_norm"] == 0.01
    assert out["datasets"]["train"]["num_worker_per_gpu"] == 0
    assert out["logger"]["print_freq"] == 1
    assert out["path"]["experiments_root"] == str(tmp_path / "experiments")
    assert BASE["train"].get("warmup_iter") is None  # input not modified


def test_unknown_key_names_dotted_path():
    opt = copy.deepcopy(BASE)
    opt["train"]["optim_g"]["lrr"] = 1e-3
    assert "train.optim_g.lrr: unknown key" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["logger"]["print_frq"] = 3
    assert "logger.print_frq: unknown key" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["datasets"]["tain"] = opt["datasets"]["train"]
    assert "datasets.tain: unknown key" in _errors(opt)


def test_wrong_type_and_missing_required():
    opt = copy.deepcopy(BASE)
    opt["train"]["total_iter"] = "many"
    assert "train.total_iter: expected int" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["train"]["use_grad_clip"] = 1
    assert "train.use_grad_clip: expected bool" in _errors(opt)
    opt = copy.deepcopy(BASE)
    del opt["train"]["total_iter"]
    assert "train.total_iter: missing required key" in _errors(opt)
    opt = copy.deepcopy(BASE)
    del opt["name"]
    assert "name: missing required key" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["val"]["metrics"]["psnr"]["better"] = "bigger"
    assert "val.metrics.psnr.better" in _errors(opt)


def test_several_errors_reported_together():
    opt = copy.deepcopy(BASE)
    opt["train"]["optim_g"]["lrr"] = 1
    opt["scale"] = "x"
    msg = _errors(opt)
    assert "train.optim_g.lrr" in msg and "scale: expected int" in msg


def test_unknown_types_and_kwargs_checked_against_classes():
    opt = copy.deepcopy(BASE)
    opt["network_g"]["type"] = "NoSuchNet"
    msg = _errors(opt)
    assert "network_g.type: unknown arch type 'NoSuchNet'" in msg and "NAFNet" in msg
    opt = copy.deepcopy(BASE)
    opt["network_g"]["widht"] = 8
    assert "network_g.widht: unknown key for NAFNet" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["train"]["optim_g"]["type"] = "AdamX"
    msg = _errors(opt)
    assert "train.optim_g.type: unknown optimizer 'AdamX'" in msg and "AdamW" in msg
    opt = copy.deepcopy(BASE)
    opt["train"]["scheduler"]["Tmax"] = 3
    assert "train.scheduler.Tmax: unknown key" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["train"]["pixel_opt"]["type"] = "PSNRLos"
    assert "train.pixel_opt.type: unknown loss type" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["datasets"]["train"]["gt_sise"] = 3
    assert "datasets.train.gt_sise: unknown key" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["val"]["metrics"]["psnr"]["type"] = "calculate_psrn"
    assert "val.metrics.psnr.type: unknown metric type" in _errors(opt)


def test_consistency_checks():
    opt = copy.deepcopy(BASE)
    del opt["train"]["pixel_opt"]
    assert "needs at least one loss" in _errors(opt)
    opt = copy.deepcopy(BASE)
    opt["datasets"]["train"]["mini_batch_sizes"] = [2, 1]
    assert "mini_batch_sizes, gt_sizes and iters together" in _errors(opt)


def test_parse_override_values_are_yaml_not_python():
    assert parse_override("train.total_iter=100") == (["train", "total_iter"], 100)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=1e-3")[1] == 1e-3  # a float, not YAML 1.1's string "1e-3"
    assert parse_override("a.b=2E+5")[1] == 2e5 and parse_override("a.b=x1e3")[1] == "x1e3"
    assert parse_override("a=~") == (["a"], None)
    # Python expressions are just strings: nothing is evaluated.
    assert parse_override("a=__import__('os').getcwd()") == (["a"], "__import__('os').getcwd()")
    for bad in ("train.total_iter", "=3", "a..b=1", "a b=1", "a.b=[1, 2"):
        with pytest.raises(OptionsError, match="--set"):
            parse_override(bad)


def test_overrides_create_keys_only_where_schema_allows():
    opt = apply_overrides(BASE, ["train.warmup_iter=5", "datasets.val_2.type=SyntheticMotionBlurDataset",
                                 "train.optim_g.lr=1e-4"])
    out = validate_options(opt)
    assert out["train"]["warmup_iter"] == 5 and "val_2" in out["datasets"]
    assert out["train"]["optim_g"]["lr"] == pytest.approx(1e-4) and isinstance(out["train"]["optim_g"]["lr"], float)
    assert "train.new_thing: unknown key" in _errors(apply_overrides(BASE, ["train.new_thing=1"]))
    with pytest.raises(OptionsError, match="train.total_iter is a int"):
        apply_overrides(BASE, ["train.total_iter.x=1"])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(OptionsError, match="bad.yml"):
        load_options(bad)
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        load_options(tmp_path / "missing.yml")
    f = tmp_path / "o.yml"
    f.write_text(yaml.safe_dump({**BASE, "bogus": 1}))
    with pytest.raises(OptionsError, match=r"o\.yml.*\n.*bogus: unknown key"):
        parse_options(f)


def test_cli_reports_bad_options_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "o.yml"
    f.write_text(yaml.safe_dump(BASE))
    with pytest.raises(SystemExit) as info:
        train_main(["-opt", str(f), "--set", "train.optim_g.lrr=1"])
    assert info.value.code == 2
    assert "train.optim_g.lrr: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "experiments").exists()
    with pytest.raises(SystemExit):
        train_main(["-opt", str(f), "--set", "no_equals_sign"])
    assert "--set 'no_equals_sign'" in capsys.readouterr().err


def test_dump_round_trip(tmp_path):
    out = validate_options(BASE)
    path = dump_options(out, tmp_path / "x.yml", ["command: python train.py -opt x.yml"])
    text = path.read_text()
    assert text.startswith("# command: python train.py -opt x.yml\n")
    assert validate_options(yaml.safe_load(text)) == out


@pytest.mark.parametrize("name", ["nafnet_ddr.yml", "nafnet_psnr.yml", "restormer_ddr.yml", "restormer_psnr.yml",
                                  "demo/nafnet_ddr_demo.yml"])
def test_shipped_option_files_validate(name):
    opt = parse_options(REPO / "options" / name)
    assert opt["train"]["total_iter"] > 0
    if "ddr" in name:
        assert opt["train"]["ddr_opt"]["type"] == "DDRLoss"
    else:
        assert opt["train"]["ddr_opt"] is None


def test_recipe_values_match_published_recipes():
    naf = parse_options(REPO / "options" / "nafnet_psnr.yml")
    assert naf["network_g"] == {"type": "NAFNetLocal", "width": 32, "enc_blk_nums": [1, 1, 1, 28], "middle_blk_num": 1,
                                "dec_blk_nums": [1, 1, 1, 1], "img_channel": 3, "train_size": [1, 3, 256, 256]}
    assert naf["train"]["optim_g"] == {"type": "AdamW", "lr": 1e-3, "weight_decay": 1e-3, "betas": [0.9, 0.9]}
    assert naf["train"]["scheduler"] == {"type": "TrueCosineAnnealingLR", "T_max": 200000, "eta_min": 1e-7}
    assert naf["train"]["total_iter"] == 200000 and naf["manual_seed"] == 10
    assert naf["datasets"]["train"]["gt_size"] == 256 and naf["datasets"]["train"]["batch_size_per_gpu"] == 4
    res = parse_options(REPO / "options" / "restormer_psnr.yml")
    assert res["train"]["scheduler"] == {"type": "CosineAnnealingRestartCyclicLR", "periods": [92000, 208000],
                                         "restart_weights": [1, 1], "eta_mins": [3e-4, 1e-6]}
    tr = res["datasets"]["train"]
    assert tr["mini_batch_sizes"] == [8, 5, 4, 2, 1, 1] and tr["gt_sizes"] == [128, 160, 192, 256, 320, 384]
    assert sum(tr["iters"]) == res["train"]["total_iter"] == 300000
    assert res["train"]["optim_g"] == {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]}


def test_options_errors_are_user_errors(tmp_path, capsys, monkeypatch):
    assert issubclass(OptionsError, InputError) and issubclass(OptionsError, ValueError)
    with pytest.raises(MissingPathError, match="missing.yml"):
        load_options(tmp_path / "missing.yml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        train_main(["-opt", "missing.yml"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == "ddr-train: error: option file not found: missing.yml\n"


def test_resume_changes_split_sound_and_unsound_keys():
    old = validate_options({**BASE, "manual_seed": 5})
    new = validate_options(apply_overrides(old, [
        "train.total_iter=20", "logger.print_freq=7", "val.val_freq=2", "datasets.val.length=3",
        "datasets.train.num_worker_per_gpu=2", "manual_seed=~",
        "train.scheduler.T_max=9", "network_g.width=16", "datasets.train.gt_size=64", "train.optim_g.lr=2e-3",
    ]))
    applied, refused = resume_changes(old, new)
    assert [k for k, _, _ in applied] == ["datasets.train.num_worker_per_gpu", "datasets.val.length",
                                          "logger.print_freq", "train.total_iter", "val.val_freq"]
    assert refused == [("datasets.train.gt_size", 32, 64), ("network_g.width", 8, 16),
                       ("train.optim_g.lr", 1e-3, 2e-3), ("train.scheduler.T_max", 10, 9)]
    assert resume_changes(old, {**new, "manual_seed": 6})[1][0] == ("datasets.train.gt_size", 32, 64)
    assert ("manual_seed", 5, 6) in resume_changes(old, {**new, "manual_seed": 6})[1]
    # a key the saved options lack, at its schema default (written by an older version): not a change
    older = copy.deepcopy(old)
    del older["train"]["accumulate_grad_batches"]
    assert resume_changes(older, old) == ([], [])
    del older["train"]["use_grad_clip"]
    assert resume_changes(older, apply_overrides(old, ["train.use_grad_clip=true"]))[1] == [
        ("train.use_grad_clip", "(absent)", True)]


def test_resume_compares_loss_terms_by_name_whichever_way_written():
    ddr = {"type": "DDRLoss", "loss_weight": 0.1, "pretrained": "none"}
    old = validate_options({**BASE, "train": {**BASE["train"], "ddr_opt": ddr}})
    as_catalog = copy.deepcopy(old)
    as_catalog["train"]["losses"] = {"l_pix": as_catalog["train"].pop("pixel_opt"),
                                     "l_ddr": as_catalog["train"].pop("ddr_opt")}
    as_catalog = validate_options(as_catalog)
    # the same terms: no change either way; a term switched off with ~ is no term
    assert resume_changes(old, as_catalog) == ([], []) and resume_changes(as_catalog, old) == ([], [])
    older = copy.deepcopy(old)  # saved before the catalog existed: no train.losses / perceptual_opt keys
    del older["train"]["losses"], older["train"]["perceptual_opt"]
    assert resume_changes(older, old) == ([], []) and resume_changes(older, as_catalog) == ([], [])
    assert resume_changes(as_catalog, apply_overrides(as_catalog, ["train.losses.extra=~"])) == ([], [])
    # a weight is refused, reported under the key the new options use
    assert resume_changes(old, apply_overrides(old, ["train.ddr_opt.loss_weight=0.2"]))[1] == [
        ("train.ddr_opt.loss_weight", 0.1, 0.2)]
    assert resume_changes(old, apply_overrides(as_catalog, ["train.losses.l_ddr.loss_weight=0.2"]))[1] == [
        ("train.losses.l_ddr.loss_weight", 0.1, 0.2)]
    # adding or removing a term is refused
    added = apply_overrides(as_catalog, ["train.losses.l1.type=L1Loss"])
    assert resume_changes(old, added)[1] == [("train.losses.l1.type", "(absent)", "L1Loss")]
    removed = apply_overrides(old, ["train.ddr_opt=~"])
    assert [k for k, _, _ in resume_changes(old, removed)[1]] == [
        "train.ddr_opt.loss_weight", "train.ddr_opt.pretrained", "train.ddr_opt.type"]
    # switch_hint only names an option in error messages: applied
    hint = apply_overrides(as_catalog, ["train.losses.l_ddr.switch_hint=--ddr"])
    assert resume_changes(old, hint) == ([("train.losses.l_ddr.switch_hint", "(absent)", "--ddr")], [])
