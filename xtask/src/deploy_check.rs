//! `cargo xtask deploy-check`: the Kubernetes manifests under `deploy/`,
//! rendered by `kubectl kustomize` (Debian's kubernetes-client 1.20, unpacked
//! from its .deb), validated
//! offline against the Kubernetes schemas (PyPI `kubernetes-validate`),
//! scanned by `checkov` (PyPI; every finding fixed or skipped with a reason
//! in the manifest), and held to the least-privilege rules of
//! docs/DEPLOYMENT.md. The PyPI tools live in a venv under target/.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{self, sh};

/// Kubernetes version the schemas are checked against.
const KUBE_VERSION: &str = "1.30";

/// The kustomizations rendered and checked.
const TARGETS: &[(&str, &str)] = &[("base", "deploy"), ("example", "deploy/overlays/example")];

/// Rules on the rendered DaemonSet the schema and checkov do not state:
/// not privileged, no token, read-only root, RuntimeDefault seccomp, every
/// host mount read-only but the history, capabilities dropped then added.
const POLICY: &str = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"] for d in docs}
need = {"Namespace", "ServiceAccount", "DaemonSet", "Service"}
assert need <= kinds, f"missing kinds: {need - kinds}"
ns = next(d for d in docs if d["kind"] == "Namespace")
assert "pod-security.kubernetes.io/enforce" in ns["metadata"].get("labels", {}), "namespace without a pod-security label"
sa = next(d for d in docs if d["kind"] == "ServiceAccount")
assert sa.get("automountServiceAccountToken") is False, "service account mounts a token"
svc = next(d for d in docs if d["kind"] == "Service")
assert svc["spec"].get("clusterIP") == "None", "service is not headless"
ds = next(d for d in docs if d["kind"] == "DaemonSet")
pod = ds["spec"]["template"]["spec"]
assert pod.get("automountServiceAccountToken") is False, "pod mounts a token"
assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
hostpaths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
assert "/" not in hostpaths.values(), "the host's whole / is mounted"
for c in pod["containers"]:
    sc = c["securityContext"]
    assert not sc.get("privileged", False), f"{c['name']} is privileged"
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc["capabilities"]["drop"] == ["ALL"], "capabilities not dropped first"
    # The set measured in docs/DEPLOYMENT.md and run by deploy/hack/podman-run.sh.
    assert sc["capabilities"]["add"] == ["BPF", "PERFMON", "SYSLOG", "SYS_ADMIN"], sc["capabilities"]["add"]
    for m in c.get("volumeMounts", []):
        if m["name"] in hostpaths and hostpaths[m["name"]] != "/var/lib/kmem-trace":
            assert m.get("readOnly") is True, f"host path {hostpaths[m['name']]} mounted read-write"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert any(a.startswith("--listen=[") for a in c["args"]), "--listen without brackets breaks on IPv6 pod IPs"
print(f"policy: {sys.argv[1]}: ok ({len(docs)} objects)")
"#;

/// The venv with the PyPI tools, created on first use.
fn venv(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/deploy-check/venv");
    let bin = dir.join("bin");
    if !bin.join("checkov").exists() || !bin.join("kubernetes-validate").exists() {
        // A half-made venv from an interrupted run would fail the same way again.
        let _ = std::fs::remove_dir_all(&dir);
        sh(Command::new("python3").arg("-m").arg("venv").arg(&dir))?;
        sh(Command::new(bin.join("pip")).args([
            "install",
            "--quiet",
            // Pinned: a new checkov release adds checks, and the suite must not
            // change under a commit that did not change.
            "kubernetes-validate==1.37.0",
            "checkov==3.3.30",
        ]))?;
    }
    Ok(bin)
}

/// Debian's kubectl (package kubernetes-client, 1.20: kustomize v2.0.3), the
/// oldest a user of this project renders with, unpacked from its .deb into
/// target/ (`apt-get download`, nothing installed: a machine may carry another
/// `kubectl` package that conflicts with it). The manifests must render with
/// it; newer kubectls render them the same.
fn debian_kubectl(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/deploy-check/kubernetes-client");
    let bin = dir.join("usr/bin/kubectl");
    if bin.exists() {
        return Ok(bin);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    {
        let _apt = util::apt_lock()?;
        // No package lists (an image that removed them; nothing installed this
        // run, so no `apt-get update` ran): fetch them first.
        if !util::ok(Command::new("apt-cache").args(["show", "kubernetes-client"])) {
            sh(util::apt_get().args(["update", "-qq"]))?;
        }
        sh(Command::new("apt-get")
            .current_dir(&dir)
            .args(["download", "kubernetes-client"]))?;
    }
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no kubernetes-client .deb")?;
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    Ok(bin)
}

/// Renders one kustomization into target/deploy-check/NAME.yaml.
fn render(root: &Path, kubectl: &Path, name: &str, dir: &str) -> Result<PathBuf> {
    let out = Command::new(kubectl)
        .args(["kustomize", dir])
        .current_dir(root)
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = root.join(format!("target/deploy-check/{name}.yaml"));
    std::fs::write(&path, &out.stdout)?;
    eprintln!("deploy-check: rendered {dir} -> {}", path.display());
    Ok(path)
}

pub fn run() -> Result<()> {
    let root = util::root();
    std::fs::create_dir_all(root.join("target/deploy-check"))?;
    let bin = venv(&root)?;
    let kubectl = debian_kubectl(&root)?;
    for (name, dir) in TARGETS {
        let rendered = render(&root, &kubectl, name, dir)?;
        sh(Command::new(bin.join("python"))
            .args(["-c", POLICY])
            .arg(&rendered))?;
        // CRDs (the PodMonitor) have no schema there: a warning, not a failure.
        sh(Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBE_VERSION])
            .arg(&rendered))?;
        sh(Command::new(bin.join("checkov"))
            .args(["--quiet", "--compact", "--skip-download"])
            .args(["--framework", "kubernetes", "-f"])
            .arg(&rendered))?;
    }
    eprintln!("deploy-check: ok");
    Ok(())
}

/// Every PromQL expression of the Grafana dashboard and the alert rules names
/// only series the exporter writes: a renamed metric fails here, without root.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kmem_trace::{
        decode::decode_recording,
        lifecycle::{Lifecycle, LifecycleConfig},
        metrics::{Metrics, MetricsOutput},
        watch::Pipeline,
    };

    use crate::util;

    /// The exporter's text after a recorded kernel session (labelled families
    /// only appear once they have a series).
    fn exposition() -> String {
        let path = util::root().join("kmem-trace/tests/fixtures/churn-6.18-v1.kmt");
        let (_, events) = decode_recording(&std::fs::read(path).unwrap()).unwrap();
        let lc = Lifecycle::new(LifecycleConfig {
            zombie_after_ns: 1_000_000_000,
            ..LifecycleConfig::default()
        })
        .unwrap();
        let mut out = MetricsOutput::new(Metrics::new(20));
        {
            let mut pipe = Pipeline::new(lc, &mut out);
            for e in &events {
                pipe.feed_event(e).unwrap();
            }
            let last = events.last().unwrap().ts_ns();
            pipe.status(3, "tracepoint", std::time::Duration::from_secs(5), last)
                .unwrap();
        }
        out.metrics().encode()
    }

    /// The sample names of the exporter's families (from their TYPE lines:
    /// counters end in `_total`, histograms in `_bucket`/`_sum`/`_count`).
    fn exported() -> BTreeSet<String> {
        let text = exposition();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
        assert!(names.len() > 10, "exporter families: {text}");
        names
    }

    /// The `kmem_trace_*` identifiers in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("kmem_trace_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        out
    }

    fn dashboard_exprs() -> Vec<String> {
        let path = util::root().join("deploy/grafana/kmem-trace.json");
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut exprs = Vec::new();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                exprs.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if let Some(q) = v["query"].as_str().filter(|q| q.contains("kmem_trace_")) {
                exprs.push(q.to_string());
            }
        }
        exprs
    }

    /// `expr:` lines of the alert rules (YAML, one-line expressions).
    fn rule_exprs() -> Vec<String> {
        let path = util::root().join("deploy/prometheus/rules.yml");
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(|e| e.trim().to_string())
            .collect()
    }

    #[test]
    fn dashboard_and_rules_query_only_exported_metrics() {
        let names = exported();
        let exprs: Vec<String> = dashboard_exprs().into_iter().chain(rule_exprs()).collect();
        assert!(exprs.len() >= 12, "{exprs:?}");
        let mut used = BTreeSet::new();
        for e in &exprs {
            for m in metric_names(e) {
                assert!(
                    names.contains(&m),
                    "{m} (in {e}) is not exported; exporter: {names:?}"
                );
                used.insert(m);
            }
        }
        // The dashboard covers what the issue lists: counts, IDs, forecast,
        // leak rate, namespaces, latency, drops.
        for m in [
            "kmem_trace_zombies",
            "kmem_trace_dying_memcgs",
            "kmem_trace_live_memcgs",
            "kmem_trace_memcg_ids_in_use",
            "kmem_trace_id_exhaustion_seconds",
            "kmem_trace_leak_rate_per_hour",
            "kmem_trace_zombies_by_namespace",
            "kmem_trace_offline_to_free_seconds_bucket",
            "kmem_trace_ring_drops_total",
        ] {
            assert!(used.contains(m), "the dashboard does not show {m}");
        }
    }

    /// Grafana's variables replaced by what Prometheus takes.
    fn promql(expr: &str) -> String {
        expr.replace("$__rate_interval", "5m")
            .replace("$node", ".*")
    }

    /// Every dashboard expression parses as PromQL: `promtool check rules` on
    /// a rule file made of them (one recording rule each).
    #[test]
    fn dashboard_queries_parse() {
        let Some(promtool) = util::which("promtool") else {
            assert!(
                std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_none(),
                "promtool is not installed (Debian's prometheus)"
            );
            eprintln!("skipped: promtool is not installed");
            return;
        };
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, e) in dashboard_exprs().iter().enumerate() {
            if e.starts_with("label_values(") {
                continue; // a Grafana function, not PromQL
            }
            let e = serde_json::to_string(&promql(e)).unwrap();
            rules.push_str(&format!(
                "      - record: dashboard:q{i}\n        expr: {e}\n"
            ));
        }
        let dir = std::env::temp_dir().join(format!("xtask-dashboard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dashboard.yml");
        std::fs::write(&file, &rules).unwrap();
        let out = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn metric_names_are_extracted() {
        assert_eq!(
            metric_names("sum(rate(kmem_trace_events_total{a=\"b\"}[5m])) / kmem_trace_x"),
            ["kmem_trace_events_total", "kmem_trace_x"]
        );
    }
}
