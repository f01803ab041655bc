//! Unique keys across a pass: where the row holding each key lives, so that the later row
//! with a key replaces the earlier one, whichever date partition either is in.
//!
//! Owns the bookkeeping only: which committed files may hold a key (from the key range
//! each commit records per file), which rows of the chunk being collected were superseded,
//! and which files must be rewritten without some keys. The compactor does the reading and
//! writing. "Later" is the row's [`Version`]: its event's id (a UUIDv7, minted when the
//! body was first received) then its place in the body, not the order in which a pass
//! happens to meet rows, so that a body stored late (a resend after a crash) does not undo
//! a correction, and a rebuild keeps the rows the passes kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;

use crate::commit::DataFile;
use crate::tables::Table;

/// A table's rows of one institution: keys are unique within it.
type Scope = (Table, String);

/// A partition: table, institution, date.
pub type Partition = (Table, String, NaiveDate);

/// A file rows live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub path: String,
    pub table: Table,
    pub institution: String,
    pub date: NaiveDate,
}

#[derive(Debug)]
enum Slot {
    /// The partition's rows being collected in the current chunk.
    Collecting,
    File(FileRef),
}

/// Which of two rows with one key is the later: its event id, then its place in the body.
pub type Version = (u128, u32);

/// Where a key's row is: a slot, and for a collecting slot the row's index in it.
#[derive(Debug, Clone, Copy)]
struct Home {
    slot: u32,
    row: u32,
    version: Version,
}

/// Committed files of one scope that were not read yet, sorted by the low end of their key
/// range, with the running maximum of the high ends: the files that may hold a key are
/// found by a binary search and a short walk back, so that keys above every range (new ids,
/// the common case) cost no read at all. Files without a range are read at the first key.
#[derive(Debug, Default)]
struct Unread {
    files: Vec<(i64, i64, DataFile)>,
    running_max: Vec<i64>,
    read: Vec<bool>,
    unranged: Vec<DataFile>,
}

impl Unread {
    fn new(mut files: Vec<(i64, i64, DataFile)>, unranged: Vec<DataFile>) -> Unread {
        files.sort_by_key(|(low, _, _)| *low);
        let mut max = i64::MIN;
        let running_max = files
            .iter()
            .map(|(_, high, _)| {
                max = max.max(*high);
                max
            })
            .collect();
        Unread {
            read: vec![false; files.len()],
            files,
            running_max,
            unranged,
        }
    }

    /// The unread files whose range holds `key`, marked read.
    fn take_candidates(&mut self, key: i64) -> Vec<DataFile> {
        let mut found = std::mem::take(&mut self.unranged);
        let mut at = self.files.partition_point(|(low, _, _)| *low <= key);
        while at > 0 && self.running_max[at - 1] >= key {
            at -= 1;
            if !self.read[at] && self.files[at].1 >= key {
                self.read[at] = true;
                found.push(self.files[at].2.clone());
            }
        }
        found
    }
}

/// Where the current chunk's keyed rows go, and what else it must change.
#[derive(Debug, Default)]
pub struct ChunkPlan {
    /// For each partition with keyed rows: the path of its new file, and the rows (by
    /// index in the partition's builder) that a later row replaced.
    pub collected: HashMap<Partition, (String, HashSet<u32>)>,
    pub rewrites: Vec<Rewrite>,
}

/// A committed file to write again, to `path`, without `keys`, which later rows carry.
#[derive(Debug)]
pub struct Rewrite {
    pub file: FileRef,
    pub path: String,
    pub keys: HashSet<i64>,
}

#[derive(Debug, Default)]
pub struct UniqueKeys {
    homes: HashMap<Scope, HashMap<i64, Home>>,
    slots: Vec<Slot>,
    collecting: HashMap<Partition, u32>,
    superseded: HashMap<u32, HashSet<u32>>,
    rewrites: BTreeMap<u32, HashSet<i64>>,
    unread: HashMap<Scope, Unread>,
}

impl UniqueKeys {
    /// Starts a pass over `committed` files. A file without a recorded key range (written
    /// before ranges were recorded) may hold any key.
    pub fn new<'a>(committed: impl Iterator<Item = &'a DataFile>) -> UniqueKeys {
        type Files = (Vec<(i64, i64, DataFile)>, Vec<DataFile>);
        let mut by_scope: HashMap<Scope, Files> = HashMap::new();
        for file in committed {
            let Some(table) = Table::from_name(&file.table) else {
                continue;
            };
            if table.unique_key().is_none() {
                continue;
            }
            let (ranged, unranged) = by_scope
                .entry((table, file.institution.clone()))
                .or_default();
            match file.key_range {
                Some([low, high]) => ranged.push((low, high, file.clone())),
                None => unranged.push(file.clone()),
            }
        }
        UniqueKeys {
            unread: by_scope
                .into_iter()
                .map(|(scope, (ranged, unranged))| (scope, Unread::new(ranged, unranged)))
                .collect(),
            ..UniqueKeys::default()
        }
    }

    /// The committed files that may hold `key` and were not read yet in this pass: the
    /// caller reads their keys and gives them to [`UniqueKeys::file_read`].
    pub fn unread_files(&mut self, table: Table, institution: &str, key: i64) -> Vec<DataFile> {
        self.unread
            .get_mut(&(table, institution.to_string()))
            .map_or_else(Vec::new, |unread| unread.take_candidates(key))
    }

    /// Records the keys a committed file holds, with their rows' versions.
    pub fn file_read(&mut self, file: &DataFile, keys: Vec<(i64, Version)>) {
        let Some(table) = Table::from_name(&file.table) else {
            return;
        };
        let slot = self.new_slot(Slot::File(FileRef {
            path: file.path.clone(),
            table,
            institution: file.institution.clone(),
            date: file.date,
        }));
        let homes = self
            .homes
            .entry((table, file.institution.clone()))
            .or_default();
        for (key, version) in keys {
            homes.insert(
                key,
                Home {
                    slot,
                    row: 0,
                    version,
                },
            );
        }
    }

    /// Places the row of `key` (of `version`) collected at index `row` of its partition in
    /// this chunk. Returns whether another row with that key was there: then the earlier
    /// of the two is dropped (the one just placed, if the other is later).
    pub fn place(&mut self, partition: &Partition, key: i64, row: u32, version: Version) -> bool {
        let slot = match self.collecting.get(partition) {
            Some(slot) => *slot,
            None => {
                let slot = self.new_slot(Slot::Collecting);
                self.collecting.insert(partition.clone(), slot);
                slot
            }
        };
        let (table, institution, _) = partition;
        let placed = Home { slot, row, version };
        let homes = self.homes.entry((*table, institution.clone())).or_default();
        let dropped = match homes.get_mut(&key) {
            None => {
                homes.insert(key, placed);
                return false;
            }
            Some(home) if home.version > version => placed,
            Some(home) => std::mem::replace(home, placed),
        };
        match &self.slots[dropped.slot as usize] {
            Slot::Collecting => {
                self.superseded
                    .entry(dropped.slot)
                    .or_default()
                    .insert(dropped.row);
            }
            Slot::File(_) => {
                self.rewrites.entry(dropped.slot).or_default().insert(key);
            }
        }
        true
    }

    /// Ends the chunk: each collected partition and each rewritten file gets a new file,
    /// at the path `new_path` gives for its partition; keys now live there.
    pub fn end_chunk(&mut self, new_path: impl Fn(Table, &str, NaiveDate) -> String) -> ChunkPlan {
        let mut plan = ChunkPlan::default();
        for (partition, slot) in std::mem::take(&mut self.collecting) {
            let (table, institution, date) = &partition;
            let file = FileRef {
                path: new_path(*table, institution, *date),
                table: *table,
                institution: institution.clone(),
                date: *date,
            };
            let superseded = self.superseded.remove(&slot).unwrap_or_default();
            plan.collected
                .insert(partition, (file.path.clone(), superseded));
            self.slots[slot as usize] = Slot::File(file);
        }
        for (slot, keys) in std::mem::take(&mut self.rewrites) {
            let Slot::File(old) = &self.slots[slot as usize] else {
                unreachable!("only files are rewritten");
            };
            let file = FileRef {
                path: new_path(old.table, &old.institution, old.date),
                ..old.clone()
            };
            plan.rewrites.push(Rewrite {
                file: old.clone(),
                path: file.path.clone(),
                keys,
            });
            self.slots[slot as usize] = Slot::File(file);
        }
        plan
    }

    fn new_slot(&mut self, slot: Slot) -> u32 {
        self.slots.push(slot);
        u32::try_from(self.slots.len() - 1).expect("fewer than 4 billion files in one pass")
    }
}
