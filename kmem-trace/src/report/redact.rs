//! `report --redact`: replaces what identifies workloads and the node (pod,
//! namespace and container names, images, pod UIDs, container IDs, systemd
//! units, cgroup names, the hostname in full and short, the kernel command
//! line) with stable pseudonyms in the report's *inputs*, before the model is
//! built. Every section is then made from pseudonyms, and no rendered text is
//! searched and replaced: the report's own words (`page cache`, `<main>`)
//! cannot be hit by a workload that happens to share their name.

use std::{collections::HashMap, sync::Arc};

use super::model::Inputs;
use crate::attribution::{Attribution, ContainerMeta, Owner};

/// Stable pseudonyms: the same secret always gets the same one.
#[derive(Default)]
pub struct Pseudonyms {
    by_secret: HashMap<String, String>,
    per_kind: HashMap<&'static str, usize>,
}

impl Pseudonyms {
    /// `kind-N` for `secret` (the one it already has, if any).
    fn name(&mut self, kind: &'static str, secret: &str) -> String {
        if let Some(p) = self.by_secret.get(secret) {
            return p.clone();
        }
        let n = self.per_kind.entry(kind).or_default();
        *n += 1;
        let p = format!("{kind}-{n}");
        self.by_secret.insert(secret.to_string(), p.clone());
        p
    }

    fn arc(&mut self, kind: &'static str, s: &Option<Arc<str>>) -> Option<Arc<str>> {
        s.as_deref().map(|s| Arc::from(self.name(kind, s)))
    }

    /// How many names were replaced.
    pub fn len(&self) -> usize {
        self.by_secret.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_secret.is_empty()
    }

    /// A cgroup path, one component at a time: the kubelet's and systemd's
    /// structural names stay, IDs inside a component are replaced in place
    /// (`pod<uid>`, `cri-containerd-<id>.scope`), any other name is replaced.
    pub fn path(&mut self, path: &str) -> String {
        path.split('/')
            .map(|c| self.component(c))
            .collect::<Vec<_>>()
            .join("/")
    }

    fn component(&mut self, c: &str) -> String {
        if c.is_empty() || STRUCTURAL.contains(&c) {
            return c.to_string();
        }
        if let Some(s) = self.ids_in(c) {
            return s;
        }
        for suffix in [".service", ".scope", ".slice", ".mount", ".socket"] {
            if let Some(stem) = c.strip_suffix(suffix) {
                return format!("{}{suffix}", self.name("unit", stem));
            }
        }
        self.name("cgroup", c)
    }

    /// The component with every container ID (64 hex) and pod UID (a UUID,
    /// `-` or `_`) replaced; `None` when it has none.
    fn ids_in(&mut self, c: &str) -> Option<String> {
        let b = c.as_bytes();
        let (mut out, mut i, mut found) = (String::new(), 0, false);
        while i < b.len() {
            let hex_run = b[i..].iter().take_while(|x| x.is_ascii_hexdigit()).count();
            if hex_run >= 64 {
                out.push_str(&self.name("cid", &c[i..i + hex_run]));
                (i, found) = (i + hex_run, true);
            } else if is_uuid(&c[i..]) {
                let uid = c[i..i + 36].replace('_', "-");
                out.push_str(&self.name("uid", &uid));
                (i, found) = (i + 36, true);
            } else {
                let ch = c[i..].chars().next()?;
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        found.then_some(out)
    }

    fn meta(&mut self, m: &ContainerMeta) -> ContainerMeta {
        ContainerMeta {
            source: m.source,
            pod_name: self.arc("pod", &m.pod_name),
            namespace: self.arc("ns", &m.namespace),
            pod_uid: m
                .pod_uid
                .as_deref()
                .map(|u| Arc::from(self.name("uid", &u.replace('_', "-")))),
            container_name: self.arc("container", &m.container_name),
            image: self.arc("image", &m.image),
            container_type: m.container_type.clone(),
            // The kind (Deployment, Job) is structure; the name is identity.
            workload: m.workload.as_ref().map(|w| crate::attribution::Workload {
                kind: w.kind,
                name: self.name("workload", &w.name),
            }),
        }
    }

    fn attribution(&mut self, a: &Attribution) -> Attribution {
        let owner = match &a.owner {
            Owner::Pod(p) => {
                let mut p = p.clone();
                p.pod_uid = Arc::from(self.name("uid", &p.pod_uid.replace('_', "-")));
                p.container_id = p.container_id.map(|c| self.name("cid", &c).into());
                Owner::Pod(p)
            }
            Owner::Container {
                runtime,
                container_id,
                pod_id,
            } => Owner::Container {
                runtime: *runtime,
                container_id: self.name("cid", container_id).into(),
                pod_id: pod_id.as_deref().map(|p| self.name("cid", p).into()),
            },
            Owner::RuntimeGroup {
                runtime,
                role,
                pod_id,
                container_id,
            } => Owner::RuntimeGroup {
                runtime: *runtime,
                role: *role,
                pod_id: pod_id.as_deref().map(|p| self.name("cid", p).into()),
                container_id: container_id.as_deref().map(|c| self.name("cid", c).into()),
            },
            Owner::Systemd { unit } => Owner::Systemd {
                unit: Arc::from(self.component(unit)),
            },
            Owner::Path { path } => Owner::Path {
                path: Arc::from(self.path(path)),
            },
        };
        Attribution {
            owner,
            meta: a.meta.as_deref().map(|m| Box::new(self.meta(m))),
        }
    }
}

/// Names the kubelet, systemd and the runtimes give every node: no identity.
const STRUCTURAL: &[&str] = &[
    "kubepods",
    "burstable",
    "besteffort",
    "kubepods.slice",
    "kubepods-burstable.slice",
    "kubepods-besteffort.slice",
    "system.slice",
    "user.slice",
    "machine.slice",
    "init.scope",
    "containerd.service",
    "docker.service",
    "crio.service",
    "kubelet.service",
    "docker",
    "libpod_parent",
];

/// `8-4-4-4-12` hex with `-` or `_` at the start of `s`.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 36
        && b[..36].iter().enumerate().all(|(k, x)| match k {
            8 | 13 | 18 | 23 => *x == b'-' || *x == b'_',
            _ => x.is_ascii_hexdigit(),
        })
        && b.get(36).is_none_or(|x| !x.is_ascii_hexdigit())
}

/// Kernel command-line options that matter to memcgs (kept); the rest is
/// counted, not shown (it can name disks, hosts, tokens).
fn cmdline(c: &str) -> String {
    let keep = |o: &&str| {
        o.starts_with("cgroup")
            || o.starts_with("systemd.unified_cgroup_hierarchy")
            || o.starts_with("swapaccount")
    };
    let all: Vec<&str> = c.split_whitespace().collect();
    let kept: Vec<&str> = all.iter().copied().filter(keep).collect();
    let n = all.len() - kept.len();
    let mut s = kept.join(" ");
    if n > 0 {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&format!("({n} other options redacted)"));
    }
    s
}

/// Redacts the report's inputs in place; returns the pseudonyms made.
pub fn inputs(i: &mut Inputs) -> Pseudonyms {
    let mut p = Pseudonyms::default();
    if let Some(h) = i.hostname.take() {
        let node = p.name("node", &h);
        // The short name (`vm` of `vm.example.com`) is the same node.
        if let Some((short, _)) = h.split_once('.') {
            p.by_secret.insert(short.to_string(), node.clone());
        }
        i.hostname = Some(node);
    }
    for z in &mut i.zombies {
        z.owner = z.owner.as_ref().map(|a| p.attribution(a));
        z.owner_label = z.owner.as_ref().map(Attribution::label);
        z.path = p.path(&z.path);
        // Process names stay (runc, sh, the workload's binary tell the
        // pinning story) unless one is a name replaced above.
        let tasks = z
            .creator
            .iter_mut()
            .chain(z.residents.iter_mut())
            .chain(z.last_resident.iter_mut());
        for t in tasks {
            for comm in [&mut t.comm, &mut t.pcomm] {
                if let Some(ps) = p.by_secret.get(comm.as_str()) {
                    *comm = ps.clone();
                }
            }
        }
    }
    for r in &mut i.rows {
        r.attribution = None;
    }
    let f = &mut i.doctor.facts;
    f.cmdline = f.cmdline.as_deref().map(cmdline);
    f.kubelet.kubepods = f.kubelet.kubepods.as_deref().map(|k| p.path(k));
    if let Some(k) = f.kmem.as_mut() {
        k.path = p.path(&k.path);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_structure_and_lose_their_names() {
        let mut p = Pseudonyms::default();
        let uid = "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d";
        let cid = format!("{:064x}", 0xabcu64);
        assert_eq!(
            p.path(&format!("/kubepods/burstable/pod{uid}/{cid}")),
            "/kubepods/burstable/poduid-1/cid-1"
        );
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(
            p.path(&systemd),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poduid-1.slice/cri-containerd-cid-1.scope"
        );
        assert_eq!(
            p.path("/system.slice/billing-acme.service"),
            "/system.slice/unit-1.service"
        );
        assert_eq!(
            p.path("/jobs/customer-acme/main"),
            "/cgroup-1/cgroup-2/cgroup-3"
        );
        assert_eq!(p.path("/jobs"), "/cgroup-1", "stable");
    }

    #[test]
    fn the_command_line_keeps_only_cgroup_options() {
        assert_eq!(
            cmdline("BOOT_IMAGE=/vmlinuz root=UUID=1234 cgroup.memory=nokmem quiet"),
            "cgroup.memory=nokmem (3 other options redacted)"
        );
        assert_eq!(cmdline(""), "");
    }
}
