//! Table of real cgroup paths (kubelet cgroupfs and systemd drivers, containerd,
//! CRI-O, Docker, Podman, systemd) and the owner each must give.

use super::*;

const UID: &str = "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d";
const UID_SD: &str = "5b2ae0e6_4d1c_4c35_9b8e_2f8f3a1e9c7d";
const CID: &str = "4c1f0e5b9d2a7c3e8f6b1a0d9e8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c";
const POD: &str = "21510e3e287f1e72a221c403877073185dc4f3225f5b4e297df948337239599e";

fn pod(qos: Qos, uid: &str, cid: Option<&str>, rt: Option<Runtime>) -> Owner {
    Owner::Pod(PodPath {
        qos,
        pod_uid: uid.into(),
        container_id: cid.map(Into::into),
        runtime: rt,
    })
}

fn container(rt: Runtime, id: &str) -> Owner {
    Owner::Container {
        runtime: rt,
        container_id: id.into(),
        pod_id: None,
    }
}

fn podman_in_pod(pod: &str, id: &str) -> Owner {
    Owner::Container {
        runtime: Runtime::Podman,
        container_id: id.into(),
        pod_id: Some(pod.into()),
    }
}

fn podman_group(role: RuntimeRole, pod: Option<&str>, id: Option<&str>) -> Owner {
    Owner::RuntimeGroup {
        runtime: Runtime::Podman,
        role,
        pod_id: pod.map(Into::into),
        container_id: id.map(Into::into),
    }
}

fn unit(u: &str) -> Owner {
    Owner::Systemd { unit: u.into() }
}

#[test]
fn owners_from_real_paths() {
    use Qos::*;
    use Runtime::*;
    let static_uid = "f8b6c1e3a4d5e6f708192a3b4c5d6e7f";
    let table: Vec<(String, Owner)> = vec![
        // kubelet cgroupfs driver
        (
            format!("/kubepods/burstable/pod{UID}/{CID}"),
            pod(Burstable, UID, Some(CID), None),
        ),
        (
            format!("/kubepods/besteffort/pod{UID}"),
            pod(BestEffort, UID, None, None),
        ),
        (
            format!("/kubepods/pod{UID}/{CID}"),
            pod(Guaranteed, UID, Some(CID), None),
        ),
        (
            format!("/kubepods/burstable/pod{UID}/{CID}/nested/deeper"),
            pod(Burstable, UID, Some(CID), None),
        ),
        (
            format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
            pod(Burstable, UID, Some(CID), Some(Crio)),
        ),
        // static pod: the UID is the manifest hash
        (
            format!("/kubepods/burstable/pod{static_uid}/{CID}"),
            pod(Burstable, static_uid, Some(CID), None),
        ),
        // kubepods below a test parent or a custom --cgroup-root
        (
            format!("/kmem-trace-test-attr-4242-123456/kubepods/burstable/pod{UID}/{CID}"),
            pod(Burstable, UID, Some(CID), None),
        ),
        // kubelet systemd driver
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SD}.slice/cri-containerd-{CID}.scope"),
            pod(Burstable, UID, Some(CID), Some(Containerd)),
        ),
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SD}.slice/docker-{CID}.scope"),
            pod(BestEffort, UID, Some(CID), Some(Docker)),
        ),
        (
            format!("/kubepods.slice/kubepods-pod{UID_SD}.slice/crio-{CID}.scope"),
            pod(Guaranteed, UID, Some(CID), Some(Crio)),
        ),
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SD}.slice/crio-conmon-{CID}.scope"),
            pod(Burstable, UID, Some(CID), Some(Crio)),
        ),
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SD}.slice/libpod-{CID}.scope"),
            pod(Burstable, UID, Some(CID), Some(Podman)),
        ),
        (
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SD}.slice"),
            pod(Burstable, UID, None, None),
        ),
        // kind / kubelet with its own slice
        (
            format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SD}.slice/cri-containerd-{CID}.scope"),
            pod(BestEffort, UID, Some(CID), Some(Containerd)),
        ),
        // containerd placing the container under its own service
        (
            format!("/system.slice/containerd.service/kubepods-burstable-pod{UID_SD}.slice:cri-containerd:{CID}"),
            pod(Burstable, UID, Some(CID), Some(Containerd)),
        ),
        (
            format!("/system.slice/containerd.service/kubepods-pod{UID_SD}.slice:cri-containerd:{CID}"),
            pod(Guaranteed, UID, Some(CID), Some(Containerd)),
        ),
        // plain Docker and Podman
        (format!("/docker/{CID}"), container(Docker, CID)),
        (
            format!("/system.slice/docker-{CID}.scope"),
            container(Docker, CID),
        ),
        (
            format!("/machine.slice/libpod-{CID}.scope/container"),
            container(Podman, CID),
        ),
        // Docker 20.10 systemd driver, podman 4.3 cgroupfs and systemd managers
        (
            format!("/system.slice/docker-{CID}.scope/init"),
            container(Docker, CID),
        ),
        (
            format!("/libpod_parent/libpod-{CID}"),
            container(Podman, CID),
        ),
        (
            format!("/libpod_parent/{POD}/libpod-{CID}"),
            podman_in_pod(POD, CID),
        ),
        (
            format!("/libpod_parent/{POD}"),
            podman_group(RuntimeRole::Pod, Some(POD), None),
        ),
        (
            format!("/libpod_parent/{POD}/conmon"),
            podman_group(RuntimeRole::Conmon, Some(POD), None),
        ),
        (
            "/libpod_parent/conmon".into(),
            podman_group(RuntimeRole::Conmon, None, None),
        ),
        (
            format!("/machine.slice/libpod-conmon-{CID}.scope"),
            podman_group(RuntimeRole::Conmon, None, Some(CID)),
        ),
        (
            format!("/machine.slice/machine-libpod_pod_{POD}.slice/libpod-{CID}.scope"),
            podman_in_pod(POD, CID),
        ),
        (
            format!("/machine.slice/machine-libpod_pod_{POD}.slice/libpod-conmon-{CID}.scope"),
            podman_group(RuntimeRole::Conmon, Some(POD), Some(CID)),
        ),
        (
            format!("/machine.slice/machine-libpod_pod_{POD}.slice"),
            podman_group(RuntimeRole::Pod, Some(POD), None),
        ),
        (
            "/libpod_parent".into(),
            Owner::Path {
                path: "/libpod_parent".into(),
            },
        ),
        // systemd units and slices
        ("/system.slice/sshd.service".into(), unit("sshd.service")),
        (
            "/user.slice/user-1000.slice/session-2.scope".into(),
            unit("session-2.scope"),
        ),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service".into(),
            unit("dbus.service"),
        ),
        ("/system.slice".into(), unit("system.slice")),
        ("/init.scope".into(), unit("init.scope")),
        ("/kubepods.slice/kubepods-burstable.slice".into(), unit("kubepods-burstable.slice")),
        (
            "/system.slice/docker-notanid.scope".into(),
            unit("docker-notanid.scope"),
        ),
        // anything else
        ("/".into(), Owner::Path { path: "/".into() }),
        ("".into(), Owner::Path { path: "/".into() }),
        (
            "/kmem-trace-test-churn-1-2/c3".into(),
            Owner::Path {
                path: "/kmem-trace-test-churn-1-2/c3".into(),
            },
        ),
        (
            "/kubepods/burstable".into(),
            Owner::Path {
                path: "/kubepods/burstable".into(),
            },
        ),
        // `pod<x>` not under kubepods, or with a non-UID: not a pod
        (
            format!("/other/pod{UID}"),
            Owner::Path {
                path: format!("/other/pod{UID}").into(),
            },
        ),
        (
            "/kubepods/burstable/podman-things".into(),
            Owner::Path {
                path: "/kubepods/burstable/podman-things".into(),
            },
        ),
    ];
    for (path, want) in table {
        assert_eq!(parse(&path), want, "path {path}");
    }
}

#[test]
fn uids_are_normalised() {
    let p = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID_SD.to_uppercase()
    );
    assert_eq!(parse(&p).pod_uid(), Some(UID));
}

#[test]
fn accessors() {
    let o = parse(&format!("/kubepods/burstable/pod{UID}/{CID}"));
    assert_eq!(o.kind(), "pod");
    assert_eq!(o.container_id(), Some(CID));
    assert_eq!(o.runtime(), None);
    let o = parse(&format!("/docker/{CID}"));
    assert_eq!(o.kind(), "container");
    assert_eq!(o.runtime(), Some(Runtime::Docker));
    assert_eq!(parse("/x").container_id(), None);
}

#[test]
fn strange_input_does_not_panic() {
    for p in [
        "//",
        ":",
        "a:b:c",
        "/kubepods/pod",
        "/x.slice:",
        "kubepods-pod.slice",
        "/\u{fffd}/pod-",
        "/kubepods.slice/kubepods-pod_.slice",
        "-pod",
        "/docker",
    ] {
        let _ = parse(p);
    }
}
