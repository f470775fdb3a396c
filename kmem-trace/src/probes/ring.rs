//! The event ring buffer as an async source of raw records (tokio `AsyncFd`):
//! the rest of the pipeline sees bytes, never aya types.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};

/// Raw records from the kernel, read when the ring buffer's fd is readable.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

/// Records ready to read; consume with [`Batch::for_each`].
pub struct Batch<'a> {
    guard: AsyncFdReadyMutGuard<'a, RingBuf<MapData>>,
}

impl Batch<'_> {
    /// Hands every queued record to `f`, then clears readiness. tokio only
    /// clears it if no wake-up came in meanwhile, so a record submitted during
    /// the drain is not missed.
    pub fn for_each<E>(mut self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        let ring = self.guard.get_inner_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item)?;
            n += 1;
        }
        self.guard.clear_ready();
        Ok(n)
    }
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<EventStream> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd holds it.
        Ok(EventStream {
            fd: unsafe { AsyncFd::register(ring)? },
        })
    }

    /// Waits until the kernel signals new records.
    pub async fn ready(&mut self) -> io::Result<Batch<'_>> {
        Ok(Batch {
            guard: self.fd.readable_mut().await?,
        })
    }

    /// Hands every record already queued to `f` without waiting (periodic
    /// safety drain, and the final drain after the programs were detached).
    pub fn drain<E>(&mut self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item)?;
            n += 1;
        }
        Ok(n)
    }
}
