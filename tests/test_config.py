"""Rollout config: defaults, overrides and errors that name the key."""

from __future__ import annotations

import pytest
from conftest import BASE_TOML, make_config

from pipeline import config as config_mod
from pipeline.config import ConfigError


def test_defaults_are_the_playbooks_numbers() -> None:
    t = make_config().thresholds
    assert t.latency_field == "tfinal"
    assert t.latency_quantile == 0.95
    assert t.latency_ratio_max == 1.25
    assert t.error_ratio_max == 1.20
    assert t.delta_s_median_max == 0.45
    assert t.delta_s_median_stop == 0.60
    assert t.coverage_min == 0.70
    assert t.cache_hit_drop_max == 0.05
    assert t.lambda_flip_stop == 2
    assert t.min_warm_requests == 50
    assert t.min_probe_events == 20
    assert make_config().limits.max_event_bytes == 1_048_576


def test_thresholds_override_and_int_is_accepted_for_float() -> None:
    cfg = make_config('[thresholds]\nlatency_ratio_max = 2\nlatency_field = "tffb"\n')
    assert cfg.thresholds.latency_ratio_max == 2.0
    assert isinstance(cfg.thresholds.latency_ratio_max, float)
    assert cfg.thresholds.latency_field == "tffb"


def test_minimal_config_uses_window_defaults() -> None:
    cfg = config_mod.parse('[rollout]\nname="r"\ncontrol="a"\ncanary="b"\nstage="shadow"\n')
    assert cfg.windows.size_s == 60 and cfg.windows.horizon_s == 3600
    assert cfg.sustain_s == 3600
    assert cfg.windows.horizon_windows == 60


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[thresholds]\nlatency_ratio_maxx = 1.3\n", "thresholds.latency_ratio_maxx"),
        ("[thresholds]\nlatency_ratio_max = \"high\"\n", "thresholds.latency_ratio_max"),
        ("[thresholds]\nmin_warm_requests = 2.5\n", "thresholds.min_warm_requests"),
        ("[thresholds]\nmin_warm_requests = true\n", "thresholds.min_warm_requests"),
        # a minimum sample of 0 would judge a variant without requests (0/0)
        ("[thresholds]\nmin_warm_requests = 0\n", "thresholds.min_warm_requests"),
        ("[thresholds]\nmin_probe_events = 0\n", "thresholds.min_probe_events"),
        ("[thresholds]\nlatency_field = \"ttfb\"\n", "thresholds.latency_field"),
        ("[thresholds]\nlatency_quantile = 1.5\n", "thresholds.latency_quantile"),
        ("[thresholds]\nalpha = 0\n", "thresholds.alpha"),
        ("[thresholds]\nalpha = 1.0\n", "thresholds.alpha"),
        ("[thresholds]\nalpha = \"0.01\"\n", "thresholds.alpha"),
        ("[limits]\nmax_label_values = 0\n", "limits.max_label_values"),
        ("[surprise]\nx = 1\n", "surprise"),
    ],
)
def test_bad_keys_and_types_name_the_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.parse(BASE_TOML + extra)
    assert err.value.key == key
    assert str(err.value).startswith(key + ":")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("sustain_s = 300", "sustain = 1", "promotion.sustain"),
        ('cache_prefix = "v1:"', 'analyser = "x"', "variants.control.analyser"),
        ('cache_prefix = "v1:"', "cache_prefix = 3", "variants.control.cache_prefix"),
        ("size_s = 60", "size_s = 0", "windows.size_s"),
    ],
)
def test_bad_keys_in_existing_tables(old: str, new: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.parse(BASE_TOML.replace(old, new, 1))
    assert err.value.key == key


def test_bad_stage_names_the_ladder() -> None:
    with pytest.raises(ConfigError, match=r"rollout.stage: must be one of shadow, 1%"):
        config_mod.parse(BASE_TOML.replace('stage = "50%"', 'stage = "2%"'))


def test_horizon_must_be_a_multiple_of_the_window() -> None:
    with pytest.raises(ConfigError, match=r"windows\.horizon_s"):
        config_mod.parse(BASE_TOML.replace("horizon_s = 600", "horizon_s = 610"))


def test_unknown_variant_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"variants\.canary-v3"):
        config_mod.parse(BASE_TOML + '[variants.canary-v3]\nmetric = "dot"\n')


def test_missing_rollout_key() -> None:
    with pytest.raises(ConfigError, match=r"rollout\.canary: missing"):
        config_mod.parse('[rollout]\nname="r"\ncontrol="a"\nstage="1%"\n')


def test_invalid_toml_is_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.parse("[rollout\nname=")
    assert err.value.key == "toml"


def test_effective_lists_every_setting() -> None:
    eff = make_config().effective()
    assert set(eff) == {"rollout", "variants", "windows", "promotion", "thresholds", "limits", "match"}
    assert eff["thresholds"]["new_5xx_alpha"] == 0.001
    assert eff["thresholds"]["alpha"] == 0.01
    assert config_mod.parse(BASE_TOML + "[thresholds]\nalpha = 0.05\n").thresholds.alpha == 0.05
    assert eff["variants"]["canary-v2"]["cache_prefix"] == "v2-cnr:"


def test_with_stage_validates() -> None:
    assert make_config().with_stage("5%").stage == "5%"
    with pytest.raises(ConfigError):
        make_config().with_stage("7%")
