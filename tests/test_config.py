"""Config: TOML validated by pydantic; errors name the file and the field."""

from __future__ import annotations

import pytest

from autotune.config import Config, load_config
from autotune.errors import ConfigError


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.services == [] and cfg.agent.mode == "recommend"
    assert cfg.state_path().name == "autotune.db"
    assert cfg.rule_dirs()[0].name == "rules"


def test_full_file(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text(
        """
[agent]
sample_period_s = 2
rule_dirs = ["myrules"]

[[service]]
name = "llm"
cgroup = "/autotune/llm"
[service.slo]
p95_latency_s = 2.5
[service.latency]
metrics_url = "http://127.0.0.1:8000/metrics"

[[service]]
name = "batch"
role = "neighbour"
cmdline = "burn"
min_cpu_cores = 0.5
"""
    )
    cfg = load_config(f)
    assert [s.name for s in cfg.services] == ["llm", "batch"]
    assert cfg.service("llm").slo.p95_latency_s == 2.5
    assert cfg.rule_dirs() == [tmp_path / "myrules"]


@pytest.mark.parametrize(
    "body,needle",
    [
        ("[agent]\nsample_period_s = -1\n", "agent.sample_period_s"),
        ("[agent]\nbogus = 1\n", "agent.bogus"),
        ('[[service]]\nname = "x"\n', "service.0"),
        ('[[service]]\nname = "x"\ncgroup = "rel/path"\n', "absolute cgroup path"),
        ('[[service]]\nname = "x"\nexe="a"\n[[service]]\nname = "x"\nexe="b"\n', "duplicate service"),
        ("[agent\n", "not valid TOML"),
        ('[[service]]\nname = "x"\ncgroup = "/a/../../etc"\n', "service.0.cgroup"),
        ('[[service]]\nname = "x"\ncgroup = "/a"\nlatency = { probe_url = "127.0.0.1:8000" }\n',
         "service.0.latency.probe_url"),
        ('[[service]]\nname = "x"\ncgroup = "/a"\nadmission_url = "ftp://h/x"\n', "service.0.admission_url"),
        ("[agent]\nsample_period_s = 10\n", "at least 2 x sample_period_s (20 s)"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, body, needle):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert str(f) in str(exc.value)
    assert needle in str(exc.value)


def test_good_urls_and_nested_cgroups_pass(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text('[agent]\nsample_period_s = 0.5\nwindow_s = 1\n[[service]]\nname = "x"\ncgroup = "/a/b.slice/c"\n'
                 'admission_url = "http://127.0.0.1:8081"\n'
                 'latency = { metrics_url = "https://[::1]:8000/metrics", probe_url = "http://localhost" }\n')
    assert load_config(f).service("x").latency.metrics_url == "https://[::1]:8000/metrics"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_state_path_under_systemd(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert Config().state_path() == tmp_path / "autotune.db"
