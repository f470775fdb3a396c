//! Width-aware elision for the live view's columns: a name or path is cut
//! where it tells least (the namespace's end, the middle of a pod name, the
//! middle of a 64-hex ID), so what tells owners apart (the container, the pod
//! suffix, the leaf cgroup) stays. Widths are in characters. Pure.

/// Characters of `s`.
pub fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `w` characters at the end: `shop-prod…`.
pub fn head(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// `s` cut to `w` characters at the start: `…ods/c3`.
pub fn tail(s: &str, w: usize) -> String {
    let n = width(s);
    if n <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - (w - 1)));
    out
}

/// `s` cut in the middle to `w` characters, keeping more of the end (a pod
/// name's random suffix, a container ID's tail): `cart-7…x2x9q`.
pub fn middle(s: &str, w: usize) -> String {
    let n = width(s);
    if n <= w {
        return s.to_string();
    }
    if w < 4 {
        return tail(s, w);
    }
    let keep = w - 1;
    let front = keep * 2 / 5;
    let back = keep - front;
    let mut out: String = s.chars().take(front).collect();
    out.push('…');
    out.extend(s.chars().skip(n - back));
    out
}

/// `namespace/pod/container` in `w` characters. The container is kept
/// whole if it can be, then the pod (cut in the middle, so its workload
/// name and suffix both show), then the namespace (cut at its end); the
/// namespace goes first when there is no room for it.
pub fn owner(ns: &str, pod: &str, container: &str, w: usize) -> String {
    let full = width(ns) + width(pod) + width(container) + 2;
    if full <= w {
        return format!("{ns}/{pod}/{container}");
    }
    let (nw, pw, cw) = (width(ns), width(pod), width(container));
    // Without the namespace: pod/container.
    let avail = w.saturating_sub(1);
    let c = cw.min(avail.saturating_sub(pw.min(7)).max(avail / 2));
    let p = pw.min(avail.saturating_sub(c));
    let left = avail.saturating_sub(c + p);
    if left >= 4 && nw > 0 {
        // Room for part of the namespace too.
        return format!(
            "{}/{}/{}",
            head(ns, left - 1),
            middle(pod, p),
            middle(container, c)
        );
    }
    if p < 4 {
        return middle(container, w);
    }
    format!("{}/{}", middle(pod, p), middle(container, c))
}

/// Whether a path component is a long generated ID (hex, a UUID, a pod
/// `pod<uid>`, a `cri-containerd-<id>.scope`): cut those first.
fn is_id_like(c: &str) -> bool {
    let hexish = c.chars().filter(|c| c.is_ascii_hexdigit()).count();
    width(c) > 16 && hexish * 3 >= width(c) * 2
}

/// A cgroup path in `w` characters: long ID components shortened to their
/// first 8 characters (an ID's head tells it apart), then the start of the
/// path cut off, so the leaf always shows.
pub fn path(p: &str, w: usize) -> String {
    if width(p) <= w {
        return p.to_string();
    }
    let parts: Vec<String> = p
        .split('/')
        .map(|c| {
            if is_id_like(c) {
                head(c, 9)
            } else {
                c.to_string()
            }
        })
        .collect();
    let short = parts.join("/");
    let cut = tail(&short, w);
    // A stub of a component (`…42/task-7`) says nothing: cut at the `/`.
    match cut.find('/') {
        Some(i) if cut != short && width(&cut[..i]) <= 4 && i + 1 < cut.len() => {
            format!("…{}", &cut[i..])
        }
        _ => cut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_keep_the_telling_end() {
        assert_eq!(head("shop-production", 6), "shop-…");
        assert_eq!(tail("/a/b/c3", 4), "…/c3");
        assert_eq!(middle("cart-7d9f8b6c4-x2x9q", 12), "cart…4-x2x9q");
        assert_eq!(width(&middle("cart-7d9f8b6c4-x2x9q", 12)), 12);
        assert_eq!(middle("short", 10), "short");
        assert_eq!(head("", 0), "");
    }

    #[test]
    fn owners_keep_container_and_pod_suffix() {
        let (ns, pod, c) = ("shop-production", "cart-7d9f8b6c4-x2x9q", "istio-proxy");
        assert_eq!(
            owner(ns, pod, c, 80),
            "shop-production/cart-7d9f8b6c4-x2x9q/istio-proxy"
        );
        for w in [20, 24, 30, 37, 44] {
            let o = owner(ns, pod, c, w);
            assert!(width(&o) <= w, "{w}: {o}");
            assert!(o.ends_with("istio-proxy"), "{w}: {o}");
            assert!(o.contains("x2x9q"), "pod suffix at {w}: {o}");
        }
        let o = owner(ns, pod, c, 37);
        assert!(o.starts_with("sh"), "namespace start where it fits: {o}");
        // Very narrow: the container alone, cut in the middle.
        let o = owner(ns, pod, c, 8);
        assert!(width(&o) <= 8, "{o}");
    }

    #[test]
    fn paths_shorten_ids_then_keep_the_leaf() {
        let p = "/kubepods/burstable/pod5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d/\
                 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let f = path(p, 60);
        assert_eq!(f, "/kubepods/burstable/pod5b2ae…/01234567…");
        let f = path(p, 20);
        assert!(width(&f) <= 20 && f.ends_with("/01234567…"), "{f}");
        assert_eq!(path("/a/b", 10), "/a/b");
        assert_eq!(path("/jobs/job-42/task-7", 10), "…/task-7");
        assert_eq!(
            path("/kmem-trace-fixture-12179/c7", 20),
            "…ce-fixture-12179/c7"
        );
    }
}
