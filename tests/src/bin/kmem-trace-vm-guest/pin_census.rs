//! Whether `kmem-trace census --json` names a held pin's cause right: the pin
//! scenarios (`pins`) hand it the census entry of their dying memcg and what
//! they measured; a wrong cause is a tracer failure, not a kernel finding.
//! Pure, unit-tested below.

use kmem_trace::leaks::Cause;
use serde_json::Value;

/// Causes that say "user pages on the LRU": wrong for a memcg held by swap
/// entries, sockets or an inode's writeback association.
const LRU: [&str; 3] = ["page_cache", "tmpfs", "page_cache_or_tmpfs"];

/// What one held pin's census entry must say. `swapped`: the memcg's
/// `memory.swap.current` before rmdir (swap only); `page`: the page size.
/// Empty when the census is right.
pub fn errors(cause: Cause, entry: Option<&Value>, swapped: Option<u64>, page: u64) -> Vec<String> {
    let Some(m) = entry else {
        return vec![format!(
            "census: the {}-pinned memcg is not listed",
            cause.name()
        )];
    };
    let pin = m["pin"].as_str().unwrap_or("none");
    let own = |k: &str| m["own_pages"][k].as_u64().map(|p| p * page);
    let mut errs = Vec::new();
    let mut want = |ok: bool, what: String| {
        if !ok {
            errs.push(format!("census: {what}"));
        }
    };
    match cause {
        Cause::Swap => {
            want(
                pin == "swap",
                format!("cause {pin:?} for a swap pin, want \"swap\""),
            );
            // The census's own swap is the swap page counter where it read
            // one (`OwnStats::with_swap_counter`), else `MEMCG_SWAP`; without
            // own counters, the page counter alone.
            let got = own("swap").or_else(|| m["swap_bytes"].as_u64());
            if let Some(s) = swapped {
                want(
                    got == Some(s),
                    format!("{got:?} swap bytes, the memcg had {s} swapped out"),
                );
            }
        }
        Cause::Socket => {
            // Socket buffers charged: the census must say sockets; none
            // charged: the memcg is held by a reference only, which no counter
            // shows (an idle socket), so "unknown" is right too. Never an LRU
            // cause.
            let sock = own("sock").unwrap_or(0);
            let (ok, why) = if LRU.contains(&pin) {
                (false, "sockets hold no LRU pages".to_string())
            } else if sock > 0 {
                (pin == "sockets", format!("{sock} socket bytes charged"))
            } else {
                (
                    matches!(pin, "sockets" | "no_charge" | "unknown"),
                    "no socket bytes".to_string(),
                )
            };
            want(ok, format!("cause {pin:?} for a socket pin ({why})"));
        }
        Cause::Writeback => {
            // The inode's cgroup writeback context holds a css reference; its
            // pages went with sync and drop_caches, so nothing but stale
            // reparented kernel memory is charged: no charge, or unknown where
            // the `memory` counter still shows that. Never an LRU cause.
            // 7.3.4 kept the file's pages charged to the dying memcg past
            // sync and drop_caches: page cache is right when the census read
            // them in the memcg's own counters and the page counter holds
            // them (`pin_exact`, which stale counters never are).
            let file = own("file").unwrap_or(0);
            let shown = pin == "page_cache"
                && m["pin_exact"] == true
                && file > 0
                && m["mem_bytes"].as_u64().is_some_and(|b| b >= file);
            want(
                shown || matches!(pin, "no_charge" | "unknown"),
                format!("cause {pin:?} for a writeback pin whose pages were dropped, want \"no_charge\" or \"unknown\""),
            );
        }
        Cause::Tmpfs | Cause::PageCache | Cause::Slab => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PAGE: u64 = 4096;

    #[test]
    fn swap_needs_the_swap_cause_and_its_bytes() {
        let e = json!({"pin": "swap", "swap_bytes": 1 << 20, "own_pages": {"swap": 256}});
        assert!(errors(Cause::Swap, Some(&e), Some(1 << 20), PAGE).is_empty());
        let short = json!({"pin": "swap", "own_pages": {"swap": 200}});
        assert_eq!(
            errors(Cause::Swap, Some(&short), Some(1 << 20), PAGE).len(),
            1
        );
        let wrong = json!({"pin": "page_cache_or_tmpfs", "own_pages": {"swap": 256}});
        assert_eq!(
            errors(Cause::Swap, Some(&wrong), Some(1 << 20), PAGE).len(),
            1
        );
        // No own counters: the swap page counter.
        let counters = json!({"pin": "swap", "swap_bytes": 1 << 20});
        assert!(errors(Cause::Swap, Some(&counters), Some(1 << 20), PAGE).is_empty());
    }

    #[test]
    fn sockets_are_never_page_cache() {
        let tcp = json!({"pin": "sockets", "own_pages": {"sock": 9}});
        assert!(errors(Cause::Socket, Some(&tcp), None, PAGE).is_empty());
        let udp = json!({"pin": "no_charge", "own_pages": {"sock": 0}});
        assert!(errors(Cause::Socket, Some(&udp), None, PAGE).is_empty());
        let charged = json!({"pin": "no_charge", "own_pages": {"sock": 9}});
        assert_eq!(errors(Cause::Socket, Some(&charged), None, PAGE).len(), 1);
        let idle = json!({"pin": "unknown", "own_pages": {"sock": 0}});
        assert!(errors(Cause::Socket, Some(&idle), None, PAGE).is_empty());
        let lru = json!({"pin": "page_cache_or_tmpfs"});
        assert_eq!(errors(Cause::Socket, Some(&lru), None, PAGE).len(), 1);
    }

    #[test]
    fn writeback_is_a_reference_and_a_missing_entry_fails() {
        let ok = json!({"pin": "no_charge", "own_pages": {"file": 0}});
        assert!(errors(Cause::Writeback, Some(&ok), None, PAGE).is_empty());
        let stale = json!({"pin": "unknown", "own_pages": {"file": 0}});
        assert!(errors(Cause::Writeback, Some(&stale), None, PAGE).is_empty());
        let cache = json!({"pin": "page_cache"});
        assert_eq!(errors(Cause::Writeback, Some(&cache), None, PAGE).len(), 1);
        // 7.3.4: 266 file pages still charged, `memory` 295 pages.
        let kept = json!({"pin": "page_cache", "pin_exact": true, "mem_bytes": 1208320,
                          "own_pages": {"file": 266, "kmem": 29}});
        assert!(errors(Cause::Writeback, Some(&kept), None, PAGE).is_empty());
        let stale = json!({"pin": "page_cache", "pin_exact": false, "mem_bytes": 126976,
                           "own_pages": {"file": 266}});
        assert_eq!(errors(Cause::Writeback, Some(&stale), None, PAGE).len(), 1);
        assert_eq!(
            errors(Cause::Writeback, None, None, PAGE),
            vec!["census: the writeback-pinned memcg is not listed"]
        );
    }
}
