//! The attribution stage: per-memcg caching, metadata read once, pod-level
//! cgroups named from their containers, freed memcgs forgotten.

use std::sync::Arc;

use super::*;
use crate::lifecycle::{Applied, State};

const UID: &str = "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d";
const CID: &str = "4c1f0e5b9d2a7c3e8f6b1a0d9e8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c";

/// Knows one container; counts lookups.
struct Fake {
    calls: Arc<std::sync::atomic::AtomicU32>,
}

impl MetaLookup for Fake {
    fn lookup(&self, id: &str, _hint: Option<Runtime>) -> Option<ContainerMeta> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (id == CID).then(|| ContainerMeta {
            source: Some(Runtime::Containerd),
            pod_name: Some("web-1".into()),
            namespace: Some("shop".into()),
            pod_uid: Some(UID.into()),
            container_name: Some("nginx".into()),
            image: Some("nginx:1.25".into()),
            container_type: Some("container".into()),
            workload: None,
        })
    }
}

fn applied(addr: u64, path: &str) -> Applied {
    Applied {
        addr: Some(addr),
        memcg_id: Some(7),
        path: Some(Arc::from(path)),
        state: Some(State::Live),
        freed: None,
        anomaly: None,
    }
}

fn stage() -> (Attributor, Arc<std::sync::atomic::AtomicU32>) {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    (
        Attributor::new(Box::new(Fake {
            calls: calls.clone(),
        })),
        calls,
    )
}

#[test]
fn container_metadata_is_read_once_and_kept() {
    let (mut a, calls) = stage();
    let path = format!("/kubepods/burstable/pod{UID}/{CID}");
    let first = a.observe(&applied(1, &path)).unwrap();
    assert_eq!(first.label(), "shop/web-1/nginx");
    for _ in 0..5 {
        let again = a.observe(&applied(1, &path)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }
    // An event without a path (cgroup_release, fentry alloc) still finds it.
    let mut no_path = applied(1, "");
    no_path.path = None;
    assert!(a.observe(&no_path).is_some());
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    let v = first.view();
    assert_eq!(
        (v.kind, v.namespace, v.pod, v.container, v.qos, v.runtime),
        (
            "pod",
            Some("shop"),
            Some("web-1"),
            Some("nginx"),
            Some("burstable"),
            Some("containerd")
        )
    );
    assert_eq!(
        a.stats,
        AttributionStats {
            lookups: 1,
            found: 1
        }
    );
}

#[test]
fn pod_level_cgroups_learn_their_pod_from_a_container() {
    let (mut a, _) = stage();
    let pod = format!("/kubepods/burstable/pod{UID}");
    let before = a.observe(&applied(1, &pod)).unwrap();
    assert_eq!(before.label(), format!("pod {UID}"));
    a.observe(&applied(2, &format!("{pod}/{CID}"))).unwrap();
    let after = a.observe(&applied(1, &pod)).unwrap();
    assert_eq!(after.label(), "shop/web-1");
    let v = after.view();
    assert_eq!((v.container, v.image, v.container_id), (None, None, None));
    // A new pod-level memcg of the same pod is named at once.
    assert_eq!(a.observe(&applied(3, &pod)).unwrap().label(), "shop/web-1");
}

#[test]
fn partial_paths_wait_and_freed_memcgs_are_forgotten() {
    let (mut a, calls) = stage();
    assert!(a.observe(&applied(1, "/?12/x")).is_none());
    assert!(a.observe(&applied(1, "")).is_none());
    let path = format!("/kubepods/burstable/pod{UID}/{CID}");
    a.observe(&applied(1, &path)).unwrap();
    let mut freed = applied(1, &path);
    freed.freed = Some(Box::new(crate::lifecycle::Memcg::new(
        1,
        7,
        crate::lifecycle::Origin::Traced,
    )));
    assert_eq!(a.observe(&freed).unwrap().label(), "shop/web-1/nginx");
    assert!(a.get(1).is_none() && a.is_empty());
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn unknown_containers_and_other_owners() {
    let (mut a, _) = stage();
    let other = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let x = a
        .observe(&applied(
            1,
            &format!("/kubepods/besteffort/pod{UID}/{other}"),
        ))
        .unwrap();
    assert_eq!(x.label(), format!("pod {UID}/0123456789ab"));
    let s = a
        .observe(&applied(2, "/system.slice/cron.service"))
        .unwrap();
    assert_eq!(
        (s.label(), s.view().unit),
        ("cron.service".into(), Some("cron.service"))
    );
    let d = a.observe(&applied(3, &format!("/docker/{other}"))).unwrap();
    assert_eq!(d.label(), "docker 0123456789ab");
    let p = a.observe(&applied(4, "/t/c1")).unwrap();
    assert_eq!((p.label(), p.view().path), ("/t/c1".into(), Some("/t/c1")));
    // Seeded (history) attributions are served as they were kept.
    a.seed(
        9,
        Arc::from("/gone"),
        Attribution::of_path("/system.slice/a.service"),
    );
    assert_eq!(
        a.observe(&applied(9, "/gone")).unwrap().label(),
        "a.service"
    );
}

#[test]
fn attributions_round_trip_through_json() {
    let a = Attribution {
        owner: path::parse(&format!("/kubepods/burstable/pod{UID}/{CID}")),
        meta: Fake {
            calls: Default::default(),
        }
        .lookup(CID, None)
        .map(Box::new),
    };
    let text = serde_json::to_string(&a).unwrap();
    let back: Attribution = serde_json::from_str(&text).unwrap();
    assert_eq!(a, back);
    let fields = serde_json::to_value(a.view()).unwrap();
    assert!(fields.as_object().unwrap().len() >= 8, "{fields}");
}

#[test]
fn owner_counts_render() {
    let c = OwnerCounts {
        kinds: vec![
            ("pod", 12, 3),
            ("container", 0, 0),
            ("systemd", 30, 0),
            ("path", 5, 0),
        ],
        pods_with_dying: 2,
    };
    assert_eq!(
        c.render(),
        "owners pod 12 (3 dying), systemd 30, path 5; 2 pods with dying memcgs"
    );
    assert_eq!(OwnerCounts::default().render(), "");
}

#[test]
fn runtime_roots_must_be_directories() {
    assert!(runtime_roots(&[]).is_ok());
    let e = runtime_roots(&["/nonexistent/kmem-trace".into()]).unwrap_err();
    assert!(e.to_string().contains("is not a directory"));
}

#[test]
fn memcgs_from_a_census_are_attributed_by_path() {
    let (mut a, calls) = stage();
    let path: Arc<str> = Arc::from(format!("/kubepods/burstable/pod{UID}/{CID}"));
    let x = a.attribute_path(5, &path).unwrap();
    assert_eq!(x.label(), "shop/web-1/nginx");
    assert!(Arc::ptr_eq(&x, &a.attribute_path(5, &path).unwrap()));
    assert!(a.attribute_path(6, &Arc::from("/?3/x")).is_none());
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn podman_owners_are_labelled() {
    const CID: &str = "5c97d61827e24358de6d803544737fbc28575e61ca02eab71f0c798d741d2c18";
    const POD: &str = "21510e3e287f1e72a221c403877073185dc4f3225f5b4e297df948337239599e";
    let l = |p: &str| Attribution::of_path(p).label();
    assert_eq!(
        l(&format!("/libpod_parent/libpod-{CID}")),
        "podman 5c97d61827e2"
    );
    assert_eq!(
        l(&format!("/libpod_parent/{POD}/libpod-{CID}")),
        "podman pod 21510e3e287f/5c97d61827e2"
    );
    assert_eq!(
        l(&format!("/libpod_parent/{POD}")),
        "podman pod 21510e3e287f"
    );
    assert_eq!(l("/libpod_parent/conmon"), "podman conmon");
    let mut a = Attribution::of_path(&format!("/libpod_parent/{POD}/libpod-{CID}"));
    a.meta = Some(Box::new(ContainerMeta {
        source: Some(Runtime::Podman),
        pod_name: Some("kt-pod".into()),
        container_name: Some("kt-inpod".into()),
        image: Some("localhost/kt-busybox:1".into()),
        ..ContainerMeta::default()
    }));
    assert_eq!(a.label(), "podman kt-pod/kt-inpod");
    let v = a.view();
    assert_eq!(
        (v.kind, v.pod, v.pod_uid, v.runtime),
        ("container", Some("kt-pod"), Some(POD), Some("podman"))
    );
    assert_eq!(v.image, Some("localhost/kt-busybox:1"));
}

#[test]
fn background_lookups_complete_the_attribution_later() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut a = Attributor::background(Arc::new(Fake {
        calls: calls.clone(),
    }));
    let pod = format!("/kubepods/burstable/pod{UID}");
    let path = format!("{pod}/{CID}");
    // The event path gets the path-only owner at once; the pod-level memcg too.
    assert_eq!(
        a.observe(&applied(1, &pod)).unwrap().label(),
        format!("pod {UID}")
    );
    let first = a.observe(&applied(2, &path)).unwrap();
    assert!(first.meta.is_none());
    let mut changed = a.settle();
    changed.sort();
    // The container's memcg and its pod-level memcg are named once it arrives.
    assert_eq!(changed, vec![1, 2]);
    assert_eq!(a.get(2).unwrap().label(), "shop/web-1/nginx");
    assert_eq!(a.get(1).unwrap().label(), "shop/web-1");
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!((a.stats.lookups, a.stats.found), (1, 1));
    // Start-up attribution (census memcgs) reads synchronously.
    let mut b = Attributor::background(Arc::new(Fake {
        calls: calls.clone(),
    }));
    let got = b.attribute_path(3, &Arc::from(path.as_str())).unwrap();
    assert_eq!(got.label(), "shop/web-1/nginx");
    assert_eq!(b.lookups_dropped(), 0);
}
