//! What another writer changed, looked for before every poll: a `sync` that applied another
//! file of a source (its record of the union describes the maps: its files are taken), or an
//! `attach --feed-file` or any other writer that left entries no record describes (the `m365`
//! source then fetches and applies anew).
//!
//! Each poll first runs a cheap check ([`crate::datapath::check`]): the union record's stamp,
//! each trie's number of entries as the kernel counts it, and the next window of each trie
//! compared with what this agent wrote. It finds another writer's insert or delete, and a
//! `sync`, at the next poll; an in-place change of a value within [`Record::bound`] polls
//! (489 at a million entries a family). Only when the check sees a difference (or cannot tell,
//! before Linux 6.4) are the tries read back whole and their digest compared, as at start.
//! The agent's own applies still diff against a full read, so they also undo any change the
//! check has not reached yet.

use tracing::{info, warn};

use super::Agent;
use crate::{
    compile::Compiled,
    datapath::{Record, Verdict},
    state::Stamp,
};

/// What the agent wrote to the tries, or found there and adopted.
pub(super) struct Written {
    record: Record,
    /// The union record's stamp then: a `sync` replaces the record.
    union: Option<Stamp>,
}

impl Agent {
    /// Takes `table`, of digest `digest`, as what the tries hold and the union record as the
    /// one that describes them.
    pub(super) fn remember(&mut self, table: &Compiled, digest: String) {
        self.written = Some(Written {
            record: Record::of(table, digest),
            union: self.state.union_stamp(),
        });
    }

    /// Takes the state directory's record as what the maps hold when its digest is the
    /// maps' (an agent restarted over its own pins, or beside a `sync`).
    pub(super) fn adopt_record(&mut self) {
        let Ok(installed) = self.maps.installed() else {
            return;
        };
        self.prefixes = (installed.v4.len(), installed.v6.len());
        let digest = installed.digest();
        if self
            .state
            .union()
            .is_some_and(|union| union.entries == digest)
        {
            self.remember(&installed, digest);
        }
    }

    /// Takes in what another process changed since this agent last looked (module docs).
    pub fn reconcile(&mut self) {
        // Addresses learned since the last apply are ours, not another writer's: once applied,
        // they are in the record.
        self.settle();
        if self.unchanged() {
            return;
        }
        let Ok(installed) = self.maps.installed() else {
            return;
        };
        let digest = installed.digest();
        if let Some(written) = &mut self.written
            && written.record.digest() == digest
        {
            // The union record was saved again for the same table.
            written.union = self.state.union_stamp();
            return;
        }
        let record = self.state.union().filter(|union| union.entries == digest);
        self.load_sources();
        if let Some(union) = &record {
            warn!(
                "the maps were changed by another process ({}, applied at {}); taking its \
                 files",
                union.versions(),
                union.applied_at
            );
            self.remember(&installed, digest);
        } else {
            warn!(
                "the maps were changed by another process and hold no recorded feed; \
                 installing the service's feed again, with every source's last good file"
            );
            self.written = None;
            self.forget_m365();
            self.unknown_pins = true;
        }
        self.sources_changed();
        self.prefixes = (installed.v4.len(), installed.v6.len());
        self.save_status();
    }

    /// The cheap check: whether the union record and the tries are as this agent wrote or
    /// adopted them. `false` also when it cannot tell: the caller then reads the tries back.
    fn unchanged(&mut self) -> bool {
        let Some(written) = &self.written else {
            return false;
        };
        if self.state.union_stamp() != written.union {
            info!("the union's record was replaced; reading the tries back");
            return false;
        }
        match self.maps.check(&written.record, &mut self.walk) {
            Ok(Verdict::Unchanged) => true,
            Ok(Verdict::Changed(difference)) => {
                info!("{difference}; reading the tries back");
                false
            }
            Ok(Verdict::Unknown) => false,
            Err(error) => {
                warn!(
                    "checking the tries: {:#}; reading them back",
                    anyhow::Error::from(error)
                );
                false
            }
        }
    }
}
