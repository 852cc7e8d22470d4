#!/usr/bin/env bash
# Run the image the way the DaemonSet does, on this host with podman: the helper container (root,
# every capability dropped, one writable cgroup) and the agent container (uid 10001, read-only
# host mounts at /host) sharing the helper's socket through a volume. Shows `status --json`
# read from inside, the liveness check, /metrics, one write through the helper and its
# refusals; removes the containers, the volume and the test cgroup on exit.
#
#   sudo deploy/container/try-local.sh
#
# Env: IMAGE (default localhost/autotune:<version>), PODMAN_RUN_OPTS (extra `podman run`
# options; on a cgroup v1+v2 hybrid host crun refuses to start containers, so use e.g.
# "--runtime runc --ulimit nofile=4096:16384 --ulimit nproc=4096:8192", see docs/deploy.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$here/../../pyproject.toml")
IMAGE=${IMAGE:-localhost/autotune:$version}
read -r -a opts <<< "${PODMAN_RUN_OPTS:-}"
name=autotune-try-$$
cg=/$name
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then cgdir=/sys/fs/cgroup$cg; else cgdir=/sys/fs/cgroup/cpu$cg; fi
work=$(mktemp -d /var/tmp/autotune-try.XXXXXX)   # root-owned 0700: the helper checks the policy's dir

cleanup() {
  podman rm -f -t 2 "$name-agent" "$name-helper" >/dev/null 2>&1 || true
  podman volume rm -f "$name-sock" >/dev/null 2>&1 || true
  rmdir "$cgdir" "$otherdir" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

otherdir=$cgdir-sibling   # not in the policy, not mounted writable
mkdir "$cgdir" "$otherdir"
mkdir -p "$work/config" "$work/state" "$work/helper-state"
chown 10001:10001 "$work/state"
cat > "$work/policy.toml" <<POLICY
[peers]
uids = [10001]
[knob."cgroup.cpu_quota"]
subtrees = ["$cg"]
min = 0.1
max = 4.0
values = ["max"]
POLICY
cat > "$work/config/autotune.toml" <<CONFIG
[agent]
mode = "apply"
state_path = "/var/lib/autotune/autotune.db"
helper_socket = "/run/autotune/helper.sock"
metrics_listen = "0.0.0.0:9753"
[[service]]
name = "neighbour"
role = "neighbour"
cgroup = "$cg"
CONFIG
podman volume create "$name-sock" >/dev/null
# podman's ":ro" is not recursive: on cgroup v1 each controller under /sys/fs/cgroup is its own
# mount and would stay writable, so each is bound read-only by itself (the DaemonSet uses
# recursiveReadOnly for the same reason). On cgroup v2 it is one mount.
cgroup_ro=(-v /sys/fs/cgroup:/host/sys/fs/cgroup:ro)
while read -r mp; do
  cgroup_ro+=(-v "$mp:/host$mp:ro")
done < <(awk '$5 ~ "^/sys/fs/cgroup/" {print $5}' /proc/self/mountinfo)

echo "== helper: root, --cap-drop ALL, read-only host, writable only $cgdir"
podman run -d --name "$name-helper" "${opts[@]}" --network none --user 0:10001 --cap-drop ALL \
  --security-opt no-new-privileges --read-only \
  -v "$name-sock:/run/autotune" -v "$work/policy.toml:/etc/autotune/policy.toml:ro" \
  -v /proc:/host/proc:ro "${cgroup_ro[@]}" -v "$cgdir:/host$cgdir:rw" \
  -v "$work/helper-state:/var/lib/autotune-helper" \
  "$IMAGE" helper --policy /etc/autotune/policy.toml --socket /run/autotune/helper.sock \
  --socket-mode 660 --state /var/lib/autotune-helper/origins.json >/dev/null
sleep 3
echo "== agent: uid 10001, --cap-drop ALL, /proc and /sys read-only at /host, apply mode"
podman run -d --name "$name-agent" "${opts[@]}" --network none --user 10001:10001 --cap-drop ALL \
  --security-opt no-new-privileges --read-only --tmpfs /tmp \
  -v "$name-sock:/run/autotune" -v "$work/config:/etc/autotune/config:ro" -v "$work/state:/var/lib/autotune" \
  -v /proc:/host/proc:ro -v /sys:/host/sys:ro \
  "$IMAGE" run --config /etc/autotune/config/autotune.toml >/dev/null
sleep 12
ex() { podman exec "$name-agent" "$@"; }

echo "== autotune status --json (inside the agent container, AUTOTUNE_ROOT=/host)"
ex autotune status --json > "$work/status.json"
head -12 "$work/status.json"
echo "== autotune health"
ex autotune health --config /etc/autotune/config/autotune.toml
echo "== /metrics on 0.0.0.0:9753 (first autotune_ lines)"
ex python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9753/metrics").read().decode())' \
  > "$work/metrics.txt"
grep -m5 '^autotune_' "$work/metrics.txt"
echo "== through the helper, as the agent's uid: cap $cg at 0.5 cores, then lift it"
podman exec -i "$name-agent" python3 - "$cg" <<'PY'
import sys
from autotune.helper.client import HelperClient
from autotune.errors import PolicyRefused
cg = sys.argv[1]
c = HelperClient("/run/autotune/helper.sock")
r = c.apply("cgroup.cpu_quota", cg, "0.5")
print("apply 0.5:", r.before.value, "->", r.after.value, "changed", r.changed)
for knob, target, value in (("cgroup.cpu_quota", "/", "0.5"), ("cgroup.cpu_weight", cg, "200")):
    try:
        c.apply(knob, target, value)
        print("NOT refused:", knob, target)
    except PolicyRefused as err:
        print(f"refused {knob} {target}: {err.reason}")
r = c.apply("cgroup.cpu_quota", cg, "max")
print("apply max:", r.before.value, "->", r.after.value)
PY
echo "== the helper's mounts: as root it writes the allowed cgroup, not its sibling"
for d in "$cgdir" "$otherdir"; do
  if [ -e "$d/cpu.weight" ]; then f=/host$d/cpu.weight; else f=/host$d/cpu.shares; fi
  podman exec "$name-helper" sh -c "v=\$(cat $f); echo \$v > $f && echo 'wrote $f' || echo 'cannot write $f'" 2>&1 || true
done
echo "== agent log (last lines)"
podman logs "$name-agent" 2>&1 | tail -4
echo "== footprint"
podman stats --no-stream --format '{{.Name}} cpu={{.CPUPerc}} mem={{.MemUsage}}' "$name-agent" "$name-helper" 2>&1 || true
