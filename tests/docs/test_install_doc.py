"""docs/install.md can be followed from a checkout: every file it copies exists, and the example
config and example policy it installs agree (the policy admits the agent's user and every cgroup
the config names)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from autotune.config import load_config
from autotune.helper.policy import CgroupRule, load_policy

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs/install.md"
CONFIG = REPO / "systemd/autotune.example.toml"
POLICY = REPO / "systemd/policy.example.toml"


def shell_commands(markdown: str) -> list[list[str]]:
    """Every simple command in the doc's bash blocks, as argv (continuations joined, comments and
    `&&` / `;` / `|` / `&` split)."""
    out: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            argv: list[str] = []
            for tok in lex:
                if tok in ("&&", ";", "|", "&", "||"):
                    out.append(argv) if argv else None
                    argv = []
                else:
                    argv.append(tok)
            if argv:
                out.append(argv)
    return out


def copied_sources(argv: list[str]) -> list[str]:
    """Source paths of a `cp` / `install` (not `install -d`) command; [] for anything else."""
    if not argv or argv[0] not in ("cp", "install") or "-d" in argv:
        return []
    args, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("-m", "-o", "-g", "-t"):
            skip = True
            continue
        if not a.startswith("-"):
            args.append(a)
    return args[:-1]  # the last one is the destination


def test_every_file_the_install_doc_copies_exists():
    commands = shell_commands(DOC.read_text())
    sources = [s for argv in commands for s in copied_sources(argv)]
    assert "systemd/autotune.example.toml" in sources and "systemd/policy.example.toml" in sources
    assert {"systemd/autotune.service", "systemd/autotune-helper.service",
            "systemd/autotune-helper.socket"} <= set(sources)
    missing = [s for s in sources if not (REPO / s).exists()]
    assert missing == [], f"docs/install.md copies files that are not in the repo: {missing}"


def test_the_parser_finds_what_it_should():
    argv = shlex.split("install -m 0644 -o root -g root systemd/policy.example.toml /etc/autotune/policy.toml")
    assert copied_sources(argv) == ["systemd/policy.example.toml"]
    assert copied_sources(["install", "-d", "-m", "0755", "/etc/autotune"]) == []
    assert copied_sources(["cp", "-r", "rules", "/usr/share/autotune/rules"]) == ["rules"]
    cmds = shell_commands("```bash\ninstall -m 0644 a b \\\n   c /x/  # two sources\nfoo && cp d e\n```\n")
    assert [copied_sources(c) for c in cmds] == [["a", "b", "c"], [], ["d"]]


def _unit_value(unit: Path, key: str) -> str:
    for line in unit.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{unit} has no {key}=")


def test_example_config_and_policy_agree():
    cfg = load_config(CONFIG)
    pol = load_policy(POLICY, require_root_owned=False)
    # the agent's user and group (the unit's, and the doc's useradd) are admitted by name
    user, group = _unit_value(REPO / "systemd/autotune.service", "User"), _unit_value(
        REPO / "systemd/autotune.service", "Group")
    assert user in pol.peers.users and group in pol.peers.groups
    assert f"useradd --system --no-create-home --shell /usr/sbin/nologin {user}" in DOC.read_text()
    # the socket unit hands the socket to that group
    assert _unit_value(REPO / "systemd/autotune-helper.socket", "SocketGroup") == group
    # every cgroup the config names lies under each cgroup knob's subtrees
    cgroup_rules = {n: r for n, r in pol.knob.items() if isinstance(r, CgroupRule)}
    assert "cgroup.cpu_quota" in cgroup_rules and "cgroup.cpu_weight" in cgroup_rules
    cgroups = [s.cgroup for s in cfg.services if s.cgroup]
    assert len(cgroups) == len(cfg.services) >= 2
    for name, rule in cgroup_rules.items():
        for cg in cgroups:
            assert any(cg == t or cg.startswith(t.rstrip("/") + "/") for t in rule.subtrees), (name, cg)
    # services the policy resolves itself (affinity) are the config's, at the same cgroup
    for name, svc in pol.service.items():
        assert cfg.service(name).cgroup == svc.cgroup
    # the config talks to the socket the units create
    assert cfg.agent.helper_socket == _unit_value(REPO / "systemd/autotune-helper.socket", "ListenStream")


def test_the_by_hand_commands_name_the_config_and_policy_paths_the_doc_installs():
    text = DOC.read_text()
    for path in ("/etc/autotune/policy.toml", "/etc/autotune/autotune.toml"):
        assert f"{path}" in text
    assert "autotune helper --policy /etc/autotune/policy.toml" in text
    assert "--socket-group autotune" in text and "runuser -u autotune" in text
    assert "autotune helper serve" not in text  # no such command
