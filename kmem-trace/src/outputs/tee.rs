//! Two outputs as one: `watch --metrics` shows the tail (or the live view)
//! and feeds the metrics from the same pipeline.

use super::{Key, Output, OutputError, Snapshot, Status, Summary};
use crate::{
    attribution::{Attribution, OwnerCounts},
    decode::TraceEvent,
    lifecycle::Applied,
};

/// Sends everything to `first`, then to `second`. Keys go to `first` only.
pub struct Tee<'a> {
    pub first: &'a mut dyn Output,
    pub second: &'a mut dyn Output,
}

impl Output for Tee<'_> {
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        self.first.event(ev, applied, owner)?;
        self.second.event(ev, applied, owner)
    }

    fn owners(&mut self, counts: &OwnerCounts) -> Result<(), OutputError> {
        self.first.owners(counts)?;
        self.second.owners(counts)
    }

    fn status(&mut self, status: &Status) -> Result<(), OutputError> {
        self.second.status(status)?;
        self.first.status(status)
    }

    fn summary(&mut self, summary: &Summary) -> Result<(), OutputError> {
        self.second.summary(summary)?;
        self.first.summary(summary)
    }

    fn interim(&mut self, summary: &Summary) -> Result<(), OutputError> {
        self.second.interim(summary)?;
        self.first.interim(summary)
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        self.first.note(msg)?;
        self.second.note(msg)
    }

    fn health(&mut self, h: &super::Health) -> Result<(), OutputError> {
        self.first.health(h)?;
        self.second.health(h)
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<(), OutputError> {
        self.first.snapshot(s)?;
        self.second.snapshot(s)
    }

    fn key(&mut self, key: Key) -> Result<bool, OutputError> {
        self.first.key(key)
    }
}
