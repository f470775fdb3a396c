#!/bin/sh
# Runs the image built by `cargo xtask image` under podman with the DaemonSet's
# capabilities and host mounts (not privileged, every other capability
# dropped, read-only root, no new privileges, podman's default seccomp
# profile), churns memcgs on the host (some pinned by a tmpfs page, so they
# stay zombies), then shows the container's /metrics and `kmem-trace zombies`
# read on the host from the history the container wrote.
# Usage (root, holding the kernel lock):
#   flock /tmp/kmem-trace-kernel.lock deploy/hack/podman-run.sh [IMAGE_TAR] [HOST_BINARY]
# Differences from Kubernetes, all on the network side: --network=host and a
# loopback --listen=[127.0.0.1]:PORT stand in for the pod IP.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAR=${1:-$ROOT/target/image/kmem-trace.oci.tar}
BIN=${2:-$ROOT/target/x86_64-unknown-linux-gnu/release/kmem-trace}
IMAGE=ghcr.io/kmem-trace/kmem-trace:0.1.0
CAPS=${KMEM_CAPS:-BPF,PERFMON,SYSLOG,SYS_ADMIN}
RUN=kmem-deploy-run-$$
WORK=/tmp/$RUN
CG=/sys/fs/cgroup/memory/$RUN
PORT=${KMEM_PORT:-19470}
mkdir -p "$WORK/history" "$WORK/tmpfs"
podman() {
  command podman --root "$WORK/store" --runroot "$WORK/run" --cgroup-manager=cgroupfs \
    --events-backend=file --runtime runc "$@"
}
cleanup() {
  podman rm -f -t 2 "$RUN" >/dev/null 2>&1 || true
  rm -f "$WORK"/tmpfs/* 2>/dev/null || true
  umount "$WORK/tmpfs" 2>/dev/null || true
  for d in "$CG"/*/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
  rmdir "$CG" 2>/dev/null || true
  podman system reset --force >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
mount -t tmpfs -o size=64m tmpfs "$WORK/tmpfs"
podman load -q -i "$TAR"
# A one-file busybox image for the pinning containers (no registry).
mkdir -p "$WORK/bb" && cp /bin/busybox "$WORK/bb/busybox"
tar -C "$WORK/bb" -c busybox | podman import -q - localhost/kmem-bb >/dev/null
mkdir -p "$WORK/store/overlay-containers"
podman image inspect "$IMAGE" --format '{{json .Labels}}'
# The DaemonSet's securityContext and mounts.
podman run -d --name "$RUN" --pid=host --network=host --user 0 \
  --cap-drop=all --cap-add="$CAPS" --security-opt no-new-privileges \
  --read-only --read-only-tmpfs=false \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
  -v /sys/kernel/btf:/sys/kernel/btf:ro \
  -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
  -v "$WORK/history:/var/lib/kmem-trace" \
  -v "$WORK/store/overlay-containers:/host/run/containers/storage/overlay-containers:ro" \
  "$IMAGE" serve "--listen=[127.0.0.1]:$PORT" --listen-any --host-root=/host \
  --db=/var/lib/kmem-trace/history.db --zombie-after=1s
ok=""
for _ in $(seq 60); do
  if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; then ok=1; break; fi
  sleep 1
done
[ -n "$ok" ] || { podman logs "$RUN"; echo "not ready"; exit 1; }
echo "healthz: $(curl -s http://127.0.0.1:$PORT/healthz)  readyz: $(curl -s http://127.0.0.1:$PORT/readyz)"
grep CapEff "/proc/$(podman inspect -f '{{.State.Pid}}' "$RUN")/status"
before=$(curl -s "http://127.0.0.1:$PORT/metrics" | grep '^kmem_trace_zombies ' | cut -d' ' -f2)
# Churn: 20 memcgs, every 4th pinned by a tmpfs page written from inside it.
mkdir "$CG"
for i in $(seq 20); do
  mkdir "$CG/c$i"
  if [ $((i % 4)) -eq 0 ]; then
    sh -c "echo \$\$ > $CG/c$i/cgroup.procs; exec dd if=/dev/zero of=$WORK/tmpfs/pin$i bs=64k count=1 status=none"
  else
    sh -c "echo \$\$ > $CG/c$i/cgroup.procs; exec true"
  fi
  rmdir "$CG/c$i"
done
# Containers as CRI-O starts them for the kubelet (the io.kubernetes.*
# annotations land in overlay-containers/<id>/userdata/config.json), each
# pinning a tmpfs page, then removed: attribution from inside the image.
for i in 1 2; do
  podman run --rm --network=none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --annotation io.kubernetes.pod.namespace=deploy-test \
    --annotation io.kubernetes.pod.name=pinner-$i \
    --annotation io.kubernetes.container.name=dd \
    -v "$WORK/tmpfs:/pin" localhost/kmem-bb /busybox dd if=/dev/zero of=/pin/ctr$i bs=64k count=1
done
sleep 5
echo "--- /metrics after the churn (zombies before: $before)"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^kmem_trace_(zombies|dying_memcgs|live_memcgs|events_total|ring_drops_total|info)'
echo "--- kmem-trace zombies on the host, from the container's history"
"$BIN" zombies --db "$WORK/history/history.db" | grep -E "$RUN|deploy-test|libpod|^[A-Z]" | head -14
echo "--- container log"
podman logs "$RUN" 2>&1 | tail -4
