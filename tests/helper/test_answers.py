"""Every line the helper reads gets one clean answer and one audit decision (issue 10, defects
3 and 4): huge JSON integers, lone surrogates, overflowing values, odd ``expect_before``, and
values the kernel would refuse, through the real knob registry on the fixture tree."""

from __future__ import annotations

import json

import pytest

from autotune.helper.protocol import Response
from autotune.knobs import KNOBS

from .conftest import CPU, needs_root, raw_send, write_policy
from .test_server import _snapshot

pytestmark = needs_root


@pytest.fixture
def real(serve, tmp_path):
    """A helper with the real knob registry and 64 KiB requests."""
    return serve(write_policy(tmp_path / "big.toml", max_bytes=65536), knobs=KNOBS)


def _answers(run, *payloads: bytes) -> list[Response]:
    lines = raw_send(run.socket_path, b"".join(p + b"\n" for p in payloads) + b'{"op":"ping"}\n')
    resps = [Response.model_validate_json(ln) for ln in lines]
    assert len(resps) == len(payloads) + 1, lines  # one answer per line, then the ping's
    assert resps[-1].ok
    return resps[:-1]


@pytest.mark.parametrize("payload", [
    b'{"op":"ping","request_id":' + b"9" * 5000 + b"}",  # past int's 4,300-digit limit
    b'{"op":"apply","knob":"sysctl","target":"vm.swappiness","value":"1","x":' + b"1" * 4400 + b"}",
    b'{"op":"ping","request_id":"\\ud800"}',  # a lone surrogate: valid JSON, invalid Unicode
    b'{"op":"apply","knob":"sysctl","target":"vm.swappiness","value":"\\udfff"}',
    b'{"op":"ping","request_id":"r","\\ud83d":1}',
    b'{"op":"read","knob":"sysctl","target":["\\udc00"]}',
], ids=["huge-int-id", "huge-int-field", "surrogate-id", "surrogate-value", "surrogate-key",
        "surrogate-list"])
def test_unparseable_lines_get_a_refusal_and_a_decision(real, host_root, payload):
    run = real
    snap = _snapshot(host_root)
    (resp,) = _answers(run, payload)
    assert not resp.ok and resp.error.code == "bad_request" and resp.error.reason
    assert resp.request_id is None  # never echo text that cannot be encoded
    assert [d["code"] for d in run.decisions][:1] == ["bad_request"]
    json.dumps(run.decisions)  # the audit trail can store it
    assert _snapshot(host_root) == snap


@pytest.mark.parametrize(("fields", "code"), [
    ({"value": "1e304"}, "invalid_value"),  # float overflow in cores * period
    ({"value": "9" * 400}, "invalid_value"),
    ({"value": "0.5", "expect_before": "lots"}, "drift"),  # the current value is "max"
    ({"value": "0.5", "expect_before": "1e304"}, "drift"),
    ({"value": "0.5", "expect_before": "9" * 4000}, "drift"),
    ({"value": "0.5", "expect_before": "0-2147483647"}, "drift"),
    ({"value": "inf"}, "invalid_value"),
    ({"value": "0.2_5"}, "invalid_value"),
    ({"value": "\u0660.5"}, "invalid_value"),
], ids=lambda x: str(x)[:40] if isinstance(x, dict) else x)
def test_odd_values_on_a_quota_are_refused_not_internal(real, host_root, fields, code):
    run = real
    snap = _snapshot(host_root)
    msg = {"op": "apply", "knob": "cgroup.cpu_quota", "target": "/autotune/llm", **fields}
    (resp,) = _answers(run, json.dumps(msg).encode())
    assert not resp.ok and resp.error.code == code, resp.error
    assert _snapshot(host_root) == snap


@pytest.mark.parametrize("value", ["60.5", "60.0", "1e1", "0.2_5", "\u0661\u0660", "\uff11\uff10",
                                   "1_0", "inf", "nan", "+10", "010", "0x10", " 1 0 "])
@pytest.mark.parametrize("dry_run", [True, False])
def test_integer_sysctl_refuses_what_the_kernel_refuses(real, host_root, value, dry_run):
    run = real
    msg = {"op": "apply", "knob": "sysctl", "target": "vm.swappiness", "value": value,
           "dry_run": dry_run}
    (resp,) = _answers(run, json.dumps(msg).encode())
    assert not resp.ok and resp.error.code == "invalid_value", resp.error
    assert (host_root / "proc/sys/vm/swappiness").read_text() == "60\n"


def test_plain_integer_sysctl_and_expect_before_in_the_strict_grammar(real, host_root):
    run = real
    ok, drift = _answers(
        run,
        json.dumps({"op": "apply", "knob": "sysctl", "target": "vm.swappiness", "value": "10",
                    "dry_run": True, "expect_before": "60"}).encode(),
        # "060" is octal 48 to the kernel, not 60: no longer "the same" as the current value
        json.dumps({"op": "apply", "knob": "sysctl", "target": "vm.swappiness", "value": "10",
                    "expect_before": "060"}).encode(),
    )
    assert ok.ok and ok.result.proposed == "10" and ok.result.dry_run
    assert not drift.ok and drift.error.code == "drift"
    assert (host_root / "proc/sys/vm/swappiness").read_text() == "60\n"
    assert (host_root / CPU.lstrip("/") / "autotune/llm/cpu.cfs_quota_us").read_text() == "-1\n"
