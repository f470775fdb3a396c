//! Container metadata lookups off the event path: one worker thread reads the
//! runtimes' files (or asks a runtime), fed by a bounded queue, with a bounded
//! cache of answers by container ID. The thread that drains the ring buffer
//! only enqueues (never blocks: a full queue drops the request and counts it)
//! and collects answers when it polls.

use std::{
    collections::HashMap,
    sync::{
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use super::{ContainerMeta, MetaLookup, Runtime};

/// Requests waiting for the worker, at most.
pub const QUEUE: usize = 1024;
/// Answers kept by container ID, at most (a node runs a few hundred containers).
pub const CACHE: usize = 4096;

/// One answer: the container ID and what the runtime said.
pub type Answer = (Box<str>, Option<ContainerMeta>);

/// The worker's handle.
pub struct MetaWorker {
    requests: Option<SyncSender<(Box<str>, Option<Runtime>)>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
    /// Requests dropped because the queue was full.
    pub dropped: u64,
}

impl MetaWorker {
    /// Starts the worker thread over `lookup`.
    pub fn spawn(lookup: Arc<dyn MetaLookup>) -> std::io::Result<MetaWorker> {
        let (req_tx, req_rx) = mpsc::sync_channel::<(Box<str>, Option<Runtime>)>(QUEUE);
        // Answers are bounded by the requests: one each.
        let (ans_tx, ans_rx) = mpsc::channel::<Answer>();
        let thread = std::thread::Builder::new()
            .name("kmem-trace-meta".into())
            .spawn(move || {
                let mut cache: HashMap<Box<str>, Option<ContainerMeta>> = HashMap::new();
                while let Ok((id, hint)) = req_rx.recv() {
                    let meta = match cache.get(&id) {
                        // A miss is asked again: the container may have been
                        // written since (its memcg comes before its files).
                        Some(Some(m)) => Some(m.clone()),
                        _ => lookup.lookup(&id, hint),
                    };
                    if cache.len() >= CACHE {
                        cache.clear();
                    }
                    cache.insert(id.clone(), meta.clone());
                    if ans_tx.send((id, meta)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(MetaWorker {
            requests: Some(req_tx),
            answers: ans_rx,
            thread: Some(thread),
            dropped: 0,
        })
    }

    /// Asks for container `id`; false (and counted) when the queue is full.
    pub fn request(&mut self, id: &str, hint: Option<Runtime>) -> bool {
        let Some(tx) = &self.requests else {
            return false;
        };
        match tx.try_send((id.into(), hint)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped += 1;
                false
            }
        }
    }

    /// The answers that arrived since the last poll (never blocks).
    pub fn poll(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            match self.answers.try_recv() {
                Ok(a) => out.push(a),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Waits for every queued request to be answered (tests, shutdown).
    pub fn drain(&mut self) -> Vec<Answer> {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.poll()
    }
}

impl Drop for MetaWorker {
    fn drop(&mut self) {
        // Closing the queue ends the thread; it is not joined here, so a slow
        // read cannot hold up the tracer's exit.
        self.requests = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Slow {
        calls: AtomicU32,
        gate: std::sync::Mutex<()>,
    }

    impl MetaLookup for Slow {
        fn lookup(&self, id: &str, _hint: Option<Runtime>) -> Option<ContainerMeta> {
            let _g = self.gate.lock().unwrap();
            self.calls.fetch_add(1, Ordering::Relaxed);
            (id != "missing").then(|| ContainerMeta {
                container_name: Some(id.into()),
                ..ContainerMeta::default()
            })
        }
    }

    #[test]
    fn requests_never_block_and_answers_come_back() {
        let slow = Arc::new(Slow {
            calls: AtomicU32::new(0),
            gate: std::sync::Mutex::new(()),
        });
        // Hold the lookup: the worker takes one request and waits; the queue fills.
        let gate = slow.gate.lock().unwrap();
        let mut w = MetaWorker::spawn(slow.clone()).unwrap();
        let t = std::time::Instant::now();
        let mut accepted = 0;
        for i in 0..QUEUE + 50 {
            accepted += w.request(&format!("c{i}"), None) as usize;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "request blocked"
        );
        assert!(w.dropped >= 49, "dropped {}", w.dropped);
        assert!(w.poll().is_empty());
        drop(gate);
        let answers = w.drain();
        assert_eq!(answers.len(), accepted);
        assert!(answers
            .iter()
            .all(|(id, m)| m.as_ref().unwrap().container_name.as_deref() == Some(&**id)));
    }

    #[test]
    fn hits_are_cached_misses_asked_again() {
        let slow = Arc::new(Slow {
            calls: AtomicU32::new(0),
            gate: std::sync::Mutex::new(()),
        });
        let mut w = MetaWorker::spawn(slow.clone()).unwrap();
        for id in ["a", "a", "missing", "missing"] {
            assert!(w.request(id, None));
        }
        let answers = w.drain();
        assert_eq!(answers.len(), 4);
        assert_eq!(slow.calls.load(Ordering::Relaxed), 3);
        assert!(answers[2].1.is_none());
    }
}
