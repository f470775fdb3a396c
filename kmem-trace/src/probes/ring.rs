//! The event channel as an async source of raw records (tokio `AsyncFd`): the
//! BPF ring buffer, or one perf buffer per CPU for the old-kernel object. The
//! rest of the pipeline sees bytes, never aya types.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use aya::maps::{
    perf::{PerfEvent, PerfEventArrayBuffer},
    MapData, RingBuf,
};
use kmem_trace_common::EVENT_SIZE;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};

/// Where the kernel's records arrive, as the loader opened it.
pub enum EventSource {
    Ring(RingBuf<MapData>),
    /// One buffer per online CPU; `lost` adds up the samples the kernel
    /// reported lost (`PERF_RECORD_LOST`), shared with the drop counter.
    Perf {
        buffers: Vec<PerfEventArrayBuffer<MapData>>,
        lost: Arc<AtomicU64>,
    },
}

/// Raw records from the kernel, read when a buffer's fd is readable.
pub struct EventStream {
    inner: Inner,
}

enum Inner {
    Ring(AsyncFd<RingBuf<MapData>>),
    Perf {
        fds: Vec<AsyncFd<PerfEventArrayBuffer<MapData>>>,
        lost: Arc<AtomicU64>,
    },
}

/// Records ready to read; consume with [`Batch::for_each`].
pub struct Batch<'a> {
    inner: BatchInner<'a>,
}

enum BatchInner<'a> {
    Ring(AsyncFdReadyMutGuard<'a, RingBuf<MapData>>),
    Perf(&'a mut Inner),
}

impl Batch<'_> {
    /// Hands every queued record to `f`, then clears readiness. tokio only
    /// clears it if no wake-up came in meanwhile, so a record submitted during
    /// the drain is not missed.
    pub fn for_each<E>(self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        match self.inner {
            BatchInner::Ring(mut guard) => {
                let n = drain_ring(guard.get_inner_mut(), &mut f)?;
                guard.clear_ready();
                Ok(n)
            }
            // Readiness of the perf buffers is cleared by the next `ready()`,
            // only for buffers found empty then.
            BatchInner::Perf(inner) => inner.drain(&mut f),
        }
    }
}

impl EventStream {
    pub fn new(source: EventSource) -> io::Result<EventStream> {
        // SAFETY (both): the map and the buffers own their fds and keep them
        // open, unchanged, for as long as the AsyncFd holds them.
        let inner = match source {
            EventSource::Ring(ring) => Inner::Ring(unsafe { AsyncFd::register(ring)? }),
            EventSource::Perf { buffers, lost } => Inner::Perf {
                fds: buffers
                    .into_iter()
                    .map(|b| unsafe { AsyncFd::register(b) }.map_err(io::Error::from))
                    .collect::<io::Result<_>>()?,
                lost,
            },
        };
        Ok(EventStream { inner })
    }

    /// Waits until the kernel signals new records.
    pub async fn ready(&mut self) -> io::Result<Batch<'_>> {
        match self.inner {
            Inner::Ring(ref mut fd) => Ok(Batch {
                inner: BatchInner::Ring(fd.readable_mut().await?),
            }),
            Inner::Perf { ref mut fds, .. } => {
                std::future::poll_fn(|cx| poll_perf(fds, cx)).await?;
                Ok(Batch {
                    inner: BatchInner::Perf(&mut self.inner),
                })
            }
        }
    }

    /// Hands every record already queued to `f` without waiting (periodic
    /// safety drain, and the final drain after the programs were detached).
    pub fn drain<E>(&mut self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        self.inner.drain(&mut f)
    }
}

/// Ready when some perf buffer holds records. A buffer signalled readable but
/// found empty has its readiness cleared (and is polled again, which
/// registers the waker), so one wake-up is never lost nor spins.
fn poll_perf(
    fds: &mut [AsyncFd<PerfEventArrayBuffer<MapData>>],
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    for fd in fds.iter_mut() {
        loop {
            match fd.poll_read_ready_mut(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    if guard.get_inner().readable() {
                        return Poll::Ready(Ok(()));
                    }
                    guard.clear_ready();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
    }
    Poll::Pending
}

impl Inner {
    fn drain<E>(&mut self, f: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        match self {
            Inner::Ring(fd) => drain_ring(fd.get_mut(), f),
            Inner::Perf { fds, lost } => {
                let mut n = 0;
                for fd in fds.iter_mut() {
                    n += drain_perf(fd.get_mut(), lost, f)?;
                }
                Ok(n)
            }
        }
    }
}

/// Every record queued in the ring buffer to `f`.
fn drain_ring<E>(
    ring: &mut RingBuf<MapData>,
    f: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        f(&item)?;
        n += 1;
    }
    Ok(n)
}

/// Every sample of one perf buffer to `f` (a wrapped sample joined first),
/// lost-sample counts to `lost`.
fn drain_perf<E>(
    buf: &mut PerfEventArrayBuffer<MapData>,
    lost: &AtomicU64,
    f: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    let mut joined = Vec::new();
    let flow = buf.try_fold(0usize, |n, ev| match ev {
        PerfEvent::Sample { head, tail } => {
            let bytes = if tail.is_empty() {
                head
            } else {
                joined.clear();
                joined.extend_from_slice(head);
                joined.extend_from_slice(tail);
                &joined[..]
            };
            match f(sample_record(bytes)) {
                Ok(()) => std::ops::ControlFlow::Continue(n + 1),
                Err(e) => std::ops::ControlFlow::Break(e),
            }
        }
        PerfEvent::Lost { count } => {
            lost.fetch_add(count, Ordering::Relaxed);
            std::ops::ControlFlow::Continue(n)
        }
    });
    match flow {
        std::ops::ControlFlow::Continue(n) => Ok(n),
        std::ops::ControlFlow::Break(e) => Err(e),
    }
}

/// A perf sample's raw data is the record plus the kernel's padding to
/// 8 bytes (with its 4-byte size): the record is its first `EVENT_SIZE`
/// bytes. Anything shorter goes on whole, for the decoder to refuse.
fn sample_record(bytes: &[u8]) -> &[u8] {
    if bytes.len() > EVENT_SIZE && bytes.len() < EVENT_SIZE + 8 {
        &bytes[..EVENT_SIZE]
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_padding_is_trimmed_and_other_sizes_kept() {
        let padded = vec![7u8; EVENT_SIZE + 4];
        assert_eq!(sample_record(&padded).len(), EVENT_SIZE);
        let exact = vec![7u8; EVENT_SIZE];
        assert_eq!(sample_record(&exact).len(), EVENT_SIZE);
        let odd = vec![7u8; EVENT_SIZE + 8];
        assert_eq!(sample_record(&odd).len(), EVENT_SIZE + 8);
        assert_eq!(sample_record(&[1, 2, 3]).len(), 3);
    }
}
