"""End-to-end: a live helper on a tmp socket with a tmp root-owned policy and fixture host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autotune.errors import HostError, PolicyRefused
from autotune.helper.client import HelperClient
from autotune.helper.protocol import Response
from autotune.knobs.base import KnobState

from .conftest import CPU, needs_root, raw_send, write_policy

pytestmark = needs_root


def refused(fn, code: str, match: str | None = None) -> PolicyRefused:
    with pytest.raises(PolicyRefused) as info:
        fn()
    assert info.value.code == code, info.value.reason
    if match:
        assert match in info.value.reason, info.value.reason
    return info.value


def test_allowed_change_applied_read_back_and_restored(serve, host_root):
    run = serve()
    quota = host_root / CPU.lstrip("/") / "autotune/llm/cpu.cfs_quota_us"
    with HelperClient(run.socket_path, timeout=5) as c:
        assert c.ping() == 1
        before = c.read("cgroup.cpu_quota", "/autotune/llm")
        assert before.value == "max"
        res = c.apply("cgroup.cpu_quota", "/autotune/llm", "0.5", expect_before="max")
        assert res.changed and res.after is not None and res.after.value == "0.5"
        assert quota.read_text() == "50000"
        assert c.read("cgroup.cpu_quota", "/autotune/llm").value == "0.5"
        back = c.restore("cgroup.cpu_quota", "/autotune/llm", before)
        assert back.changed
    assert quota.read_text() == "-1"
    assert any(d["op"] == "apply" and d["ok"] and d["changed"] for d in run.decisions)


def test_dry_run_writes_nothing(serve, host_root):
    run = serve()
    f = host_root / "proc/sys/vm/swappiness"
    with HelperClient(run.socket_path) as c:
        res = c.apply("sysctl", "vm.swappiness", "10", dry_run=True)
    assert res.dry_run and not res.changed and res.proposed == "10"
    assert f.read_text() == "60\n"


def test_sysctl_and_thp_within_policy(serve, host_root):
    run = serve()
    with HelperClient(run.socket_path) as c:
        assert c.apply("sysctl", "vm/swappiness", "10").changed
        assert c.apply("thp", "defrag", "defer+madvise").changed
    assert (host_root / "proc/sys/vm/swappiness").read_text() == "10"
    assert "[defer+madvise]" in (host_root / "sys/kernel/mm/transparent_hugepage/defrag").read_text()


@pytest.mark.parametrize(
    ("knob", "target", "value", "code", "match"),
    [
        ("cgroup.memory_max", "/autotune/llm", "1G", "unknown_knob", "not allowed by policy"),
        ("governor", "all", "performance", "unknown_knob", None),
        ("cgroup.cpu_quota", "/other", "0.5", "target_refused", "outside the allowed subtrees"),
        ("cgroup.cpu_quota", "/autotune/../other", "0.5", "target_refused", "traversal"),
        ("cgroup.cpu_quota", "/autotune/llm/../../other", "0.5", "target_refused", "traversal"),
        ("cgroup.cpu_quota", "autotune/llm", "0.5", "target_refused", "absolute"),
        ("cgroup.cpu_quota", "/autotune/evil", "0.5", "target_refused", "symlink escape"),
        ("cgroup.cpu_quota", "/autotune/trap", "0.5", "target_refused", "outside the allowed subtrees"),
        ("cgroup.cpu_quota", "/autotune/nope", "0.5", "target_gone", None),
        ("cgroup.cpu_quota", "/autotune/llm", "3", "out_of_range", "outside allowed range"),
        ("cgroup.cpu_quota", "/autotune/llm", "0.01", "out_of_range", None),
        ("cgroup.cpu_quota", "/autotune/llm", "lots", "invalid_value", None),
        ("sysctl", "kernel.panic", "1", "target_refused", "not allowed"),
        ("sysctl", "vm/../kernel/panic", "1", "target_refused", "well-formed"),
        ("sysctl", "vm.swappiness", "101", "out_of_range", None),
        ("sysctl", "vm.swappiness", "nan", "out_of_range", "not a number"),
        ("sysctl", "vm.swappiness", "1 2", "out_of_range", "has 2 fields"),
        ("thp", "enabled", "always", "out_of_range", "not one of"),
        ("thp", "../../../proc/sys/kernel/panic", "never", "target_refused", None),
        ("affinity", "pids:1", "0", "target_refused", "raw pids are never accepted"),
        ("affinity", "100", "0", "target_refused", "raw pids"),
        ("affinity", "noisy", "0", "target_refused", "not an allowed service"),
        ("affinity", "llm", "0-7", "out_of_range", "not allowed"),
    ],
)
def test_refusals_name_the_reason_and_write_nothing(serve, host_root, knob, target, value, code, match):
    run = serve()
    snap = _snapshot(host_root)
    with HelperClient(run.socket_path) as c:
        refused(lambda: c.apply(knob, target, value), code, match)
        assert c.ping() == 1  # still serving on the same connection
    assert _snapshot(host_root) == snap
    assert run.decisions[-2]["ok"] is False and run.decisions[-2]["code"] == code


def test_affinity_resolves_service_to_pids(serve, host_root):
    run = serve()
    with HelperClient(run.socket_path) as c:
        before = c.read("affinity", "llm")
        assert before.target == "llm" and set(before.raw) == {"tid:100", "tid:101"}
        res = c.apply("affinity", "llm", "0")
        assert res.changed
        c.restore("affinity", "llm", before)
    assert (host_root / "proc/200/task/200/mask").read_text() == "0-1\n"  # other service untouched
    assert (host_root / "proc/100/task/101/mask").read_text() == "0-1"


def test_drift_detected_with_expect_before(serve, host_root):
    run = serve()
    (host_root / "proc/sys/vm/swappiness").write_text("30\n")  # someone else changed it
    with HelperClient(run.socket_path) as c:
        refused(lambda: c.apply("sysctl", "vm.swappiness", "10", expect_before="60"), "drift", "'30'")
    assert (host_root / "proc/sys/vm/swappiness").read_text() == "30\n"


def test_restore_paths_are_checked_and_unknown_raw_is_not_written(serve, host_root):
    run = serve()
    other = host_root / CPU.lstrip("/") / "other/cpu.cfs_quota_us"
    llm = f"{CPU}/autotune/llm"
    with HelperClient(run.socket_path) as c:
        evil = [
            {f"{CPU}/other/cpu.cfs_quota_us": "1000"},
            {f"{llm}/../../other/cpu.cfs_quota_us": "1000"},
            {f"{CPU}/autotune/trap/cpu.cfs_quota_us": "1000"},
            {"/proc/sys/kernel/panic": "1"},
            {"relative/path": "1"},
        ]
        for raw in evil:
            st = KnobState(knob="cgroup.cpu_quota", target="/autotune/llm", value="max", raw=raw)
            refused(lambda: c.restore("cgroup.cpu_quota", "/autotune/llm", st), "target_refused")
        # Allowed path, but raw bytes this helper never saw: becomes a range-checked apply.
        st = KnobState(knob="cgroup.cpu_quota", target="/autotune/llm", value="5",
                       raw={f"{llm}/cpu.cfs_quota_us": "500000"})
        refused(lambda: c.restore("cgroup.cpu_quota", "/autotune/llm", st), "out_of_range")
        st = KnobState(knob="cgroup.cpu_quota", target="/autotune/llm", value="0.25",
                       raw={f"{llm}/cpu.cfs_quota_us": "garbage"})
        assert c.restore("cgroup.cpu_quota", "/autotune/llm", st).changed
        aff = KnobState(knob="affinity", target="llm", value="0", raw={"tid:200": "0"})
        refused(lambda: c.restore("affinity", "llm", aff), "target_refused", "does not belong")
    assert other.read_text() == "-1\n"
    assert (host_root / CPU.lstrip("/") / "autotune/llm/cpu.cfs_quota_us").read_text() == "25000"
    assert (host_root / "proc/200/task/200/mask").read_text() == "0-1\n"


def test_oversized_message_refused_server_keeps_serving(serve):
    run = serve()
    big = b'{"op":"ping","pad":"' + b"x" * 100_000 + b'"}\n'
    lines = raw_send(run.socket_path, big + b'{"op":"ping"}\n')
    assert [Response.model_validate_json(ln).error.code if not Response.model_validate_json(ln).ok
            else "ok" for ln in lines] == ["too_large", "ok"]
    with HelperClient(run.socket_path) as c:
        assert c.ping() == 1


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"\xff\xfe\x00", b"[]", b"42", b"null", b'{"op":"launch"}', b'{"op":"apply"}',
     b'{"op":"apply","knob":"sysctl","target":"vm.swappiness","value":10}',
     b'{"op":"apply","knob":"sysctl","target":"vm.swappiness","value":"10","dry_run":"no"}',
     b'{"op":"read","knob":"sysctl","target":"vm.swappiness","shell":"rm -rf /"}',
     b'{"op":"restore","knob":"sysctl","target":"vm.swappiness","state":"x"}',
     # the request names knob and target once; a state naming them again is not guessed at
     b'{"op":"restore","knob":"sysctl","target":"vm.swappiness","state":{"knob":"thp","value":"1"}}',
     b"[" * 5000 + b"]" * 5000],
)
def test_malformed_requests_refused(serve, host_root, payload):
    run = serve()
    snap = _snapshot(host_root)
    lines = raw_send(run.socket_path, payload + b"\n" + b'{"op":"ping"}\n')
    assert len(lines) == 2
    first, second = (Response.model_validate_json(ln) for ln in lines)
    assert not first.ok and first.error.code in ("bad_request", "too_large") and first.error.reason
    assert second.ok
    assert _snapshot(host_root) == snap


def test_blank_and_whitespace_lines_each_get_one_answer(serve, host_root):
    """Issue 24 #3: a blank or whitespace-only line got no answer (the socket closed after 10 s),
    against "every line gets exactly one answer"."""
    run = serve()
    t0 = time.monotonic()
    lines = raw_send(run.socket_path, b"\n   \n\t\r\n" + b'{"op":"ping"}\n', timeout=5)
    resps = [Response.model_validate_json(ln) for ln in lines]
    assert len(resps) == 4 and resps[-1].ok and time.monotonic() - t0 < 4
    for r in resps[:3]:
        assert not r.ok and r.error.code == "bad_request" and "empty request line" in r.error.reason


def test_peer_with_other_uid_refused_by_so_peercred(tmp_path, host_root, policy_file):
    from .conftest import start_server

    d = tempfile.mkdtemp(prefix="autotune-helper-", dir="/tmp")
    os.chmod(d, 0o755)
    run = start_server(policy_file, host_root, f"{d}/h.sock")
    try:
        code = (
            "import os, socket, sys\n"
            "from autotune.errors import PolicyRefused\n"
            "from autotune.helper.client import HelperClient  # before dropping privileges\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])\n"
            "try:\n"
            "    s.sendall(b'{\"op\":\"apply\",\"knob\":\"sysctl\",\"target\":\"vm.swappiness\",\"value\":\"1\"}\\n')\n"
            "except BrokenPipeError:\n"
            "    pass  # refused and closed before we wrote; the answer is still queued\n"
            "print(s.recv(4096).decode())\n"
            "try:\n"
            "    HelperClient(sys.argv[1]).ping()\n"
            "except PolicyRefused as e:\n"
            "    print('CLIENT', e.code)\n"
        )
        out = subprocess.run([sys.executable, "-c", code, f"{d}/h.sock"], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        first, client_line = [ln for ln in out.stdout.splitlines() if ln.strip()]
        assert client_line == "CLIENT peer_refused"
        resp = Response.model_validate_json(first)
        assert not resp.ok and resp.error.code == "peer_refused" and "uid 65534" in resp.error.reason
        assert (host_root / "proc/sys/vm/swappiness").read_text() == "60\n"
        assert run.decisions[-1]["peer"]["uid"] == 65534
        with HelperClient(run.socket_path) as c:  # root is still served
            assert c.ping() == 1
    finally:
        run.stop()
        for f in Path(d).iterdir():
            f.unlink()
        os.rmdir(d)


def test_rate_limit_kicks_in_and_recovers(tmp_path, serve):
    now = [1000.0]
    run = serve(write_policy(tmp_path / "slow.toml", rate=1.0, burst=3), clock=lambda: now[0])
    with HelperClient(run.socket_path) as c:
        for _ in range(3):
            c.ping()
        refused(c.ping, "rate_limited", "uid 0")
        now[0] += 2.0  # two tokens come back
        c.ping()
        c.ping()
        refused(c.ping, "rate_limited")


def test_client_transport_errors_are_host_errors(tmp_path):
    with pytest.raises(HostError, match="helper at"):
        HelperClient(str(tmp_path / "missing.sock"), timeout=1).ping()
    err = PolicyRefused("drift", "x")  # one refusal type: the code is a field
    assert (err.code, err.reason, str(err)) == ("drift", "x", "x")


def test_idle_connection_reconnects(tmp_path, serve):
    text = (tmp_path / "policy.toml").read_text().replace("conn_timeout_s = 5", "conn_timeout_s = 0.2")
    run = serve(write_policy(tmp_path / "idle.toml", text=text))
    import time

    with HelperClient(run.socket_path) as c:
        c.ping()
        time.sleep(0.5)  # server closes the idle connection
        assert c.apply("sysctl", "vm.swappiness", "20").changed


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root.parent):
        for f in files:
            p = Path(dirpath) / f
            if p.suffix in (".sock", ".toml"):
                continue
            try:
                out[str(p)] = p.read_text(errors="replace")
            except OSError:
                pass
    return out


def test_decisions_are_json_serialisable(serve):
    run = serve()
    with HelperClient(run.socket_path) as c:
        c.ping()
    json.dumps(run.decisions)
