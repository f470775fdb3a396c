//! The workload that owns a pod (Deployment, ReplicaSet, Job, CronJob,
//! StatefulSet, DaemonSet, or the bare pod), from the labels the controllers
//! put on the pods they make and kubelet passes to the runtime with the
//! sandbox. No API access: the labels and the pod's name are captured while the
//! pod lives, and a zombie memcg outlives both. Pure.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Kind of a [`Workload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadKind {
    Deployment,
    /// A ReplicaSet whose name does not end in its `pod-template-hash`
    /// (made by hand, not by a Deployment).
    ReplicaSet,
    Job,
    CronJob,
    StatefulSet,
    DaemonSet,
    /// No controller label: the pod itself.
    Pod,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Pod => "Pod",
        }
    }
}

/// The owning workload of a pod, within its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

impl Workload {
    /// `Deployment/web`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.name(), self.name)
    }
}

/// Labels the controllers set (`k8s.io/api` well-known labels).
const TEMPLATE_HASH: &str = "pod-template-hash";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const JOB_NAME_LEGACY: &str = "job-name";
const REVISION_HASH: &str = "controller-revision-hash";
const STS_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const DS_GENERATION: &str = "pod-template-generation";

/// The workload of pod `pod_name` with `labels`; `None` without a pod name.
///
/// - Deployment: its ReplicaSet is `<deployment>-<pod-template-hash>`, the pod
///   `<replicaset>-<5 chars>`.
/// - Job: `batch.kubernetes.io/job-name` (1.27+) or `job-name`; a CronJob's
///   jobs are `<cronjob>-<scheduled time in minutes since the epoch>`
///   (`getJobName()` in the cronjob controller), so a numeric last part names
///   the CronJob.
/// - StatefulSet: `statefulset.kubernetes.io/pod-name`, pods `<sts>-<ordinal>`.
/// - DaemonSet: `controller-revision-hash` with `pod-template-generation`,
///   pods `<daemonset>-<5 chars>`.
pub fn from_labels(pod_name: &str, labels: &HashMap<String, String>) -> Option<Workload> {
    if pod_name.is_empty() {
        return None;
    }
    let get = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let w = |kind, name: &str| {
        Some(Workload {
            kind,
            name: name.to_string(),
        })
    };
    if let Some(job) = get(JOB_NAME).or_else(|| get(JOB_NAME_LEGACY)) {
        return match job.rsplit_once('-') {
            Some((cron, t)) if t.len() >= 8 && t.bytes().all(|b| b.is_ascii_digit()) => {
                w(WorkloadKind::CronJob, cron)
            }
            _ => w(WorkloadKind::Job, job),
        };
    }
    if let Some(hash) = get(TEMPLATE_HASH) {
        let Some((rs, _)) = pod_name.rsplit_once('-').filter(|(rs, _)| !rs.is_empty()) else {
            return w(WorkloadKind::Pod, pod_name);
        };
        return match rs.strip_suffix(hash).and_then(|d| d.strip_suffix('-')) {
            Some(deploy) if !deploy.is_empty() => w(WorkloadKind::Deployment, deploy),
            _ => w(WorkloadKind::ReplicaSet, rs),
        };
    }
    if get(STS_POD_NAME).is_some() && get(REVISION_HASH).is_some() {
        if let Some((sts, ord)) = pod_name.rsplit_once('-') {
            if !sts.is_empty() && !ord.is_empty() && ord.bytes().all(|b| b.is_ascii_digit()) {
                return w(WorkloadKind::StatefulSet, sts);
            }
        }
    }
    if get(REVISION_HASH).is_some() && get(DS_GENERATION).is_some() {
        if let Some((ds, _)) = pod_name.rsplit_once('-').filter(|(d, _)| !d.is_empty()) {
            return w(WorkloadKind::DaemonSet, ds);
        }
    }
    w(WorkloadKind::Pod, pod_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn wl(kind: WorkloadKind, name: &str) -> Option<Workload> {
        Some(Workload {
            kind,
            name: name.into(),
        })
    }

    #[test]
    fn controllers_from_their_labels() {
        use WorkloadKind::*;
        let cases: Vec<(&str, HashMap<String, String>, Option<Workload>)> = vec![
            (
                "web-7d4b9c8f6-x2x9k",
                l(&[("app", "web"), ("pod-template-hash", "7d4b9c8f6")]),
                wl(Deployment, "web"),
            ),
            // Dashes in the Deployment's name.
            (
                "shop-front-end-5f7c9d-abcde",
                l(&[("pod-template-hash", "5f7c9d")]),
                wl(Deployment, "shop-front-end"),
            ),
            // A hand-made ReplicaSet: its name does not end in the hash.
            (
                "cache-rs-q8x2z",
                l(&[("pod-template-hash", "7d4b9c8f6")]),
                wl(ReplicaSet, "cache-rs"),
            ),
            (
                "migrate-abcde",
                l(&[
                    ("batch.kubernetes.io/job-name", "migrate"),
                    ("job-name", "migrate"),
                ]),
                wl(Job, "migrate"),
            ),
            (
                "backup-29425980-kx7p2",
                l(&[("job-name", "backup-29425980")]),
                wl(CronJob, "backup"),
            ),
            // A job named with a short number is a Job, not a CronJob's.
            (
                "load-42-x1",
                l(&[("job-name", "load-42")]),
                wl(Job, "load-42"),
            ),
            (
                "redis-0",
                l(&[
                    ("controller-revision-hash", "redis-6b8f7c9d4"),
                    ("statefulset.kubernetes.io/pod-name", "redis-0"),
                    ("apps.kubernetes.io/pod-index", "0"),
                ]),
                wl(StatefulSet, "redis"),
            ),
            (
                "node-exporter-7xk2p",
                l(&[
                    ("controller-revision-hash", "5d8f9c7b6"),
                    ("pod-template-generation", "3"),
                ]),
                wl(DaemonSet, "node-exporter"),
            ),
            ("debug", l(&[("run", "debug")]), wl(Pod, "debug")),
            (
                "static-etcd-node1",
                HashMap::new(),
                wl(Pod, "static-etcd-node1"),
            ),
            ("", l(&[("pod-template-hash", "x")]), None),
            // Odd input: a hash label on a name without dashes is the pod.
            ("x", l(&[("pod-template-hash", "x")]), wl(Pod, "x")),
            ("-1", l(&[("pod-template-hash", "1")]), wl(Pod, "-1")),
        ];
        for (pod, labels, want) in cases {
            assert_eq!(from_labels(pod, &labels), want, "{pod} {labels:?}");
        }
        assert_eq!(
            from_labels(
                "web-7d4b9c8f6-x2x9k",
                &l(&[("pod-template-hash", "7d4b9c8f6")])
            )
            .unwrap()
            .label(),
            "Deployment/web"
        );
    }
}
