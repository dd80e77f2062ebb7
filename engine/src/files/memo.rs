//! Indexes over a restore's file map, built once by the restorer before it
//! forks (so every stub inherits them) instead of scanning every file entry
//! for each pipe or unix socket created: with thousands of files, each scan
//! walks megabytes of entries, once per object.
//!
//! [`prepare`] rebuilds them for the map of the current restore; users look
//! them up with [`get`], which only answers for that same map (same address
//! and size) and otherwise lets them scan the map as before.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use stasis_proto::criu::FileEntry;

#[derive(Default)]
pub(crate) struct Index {
    /// pipe_id -> file ids of its ends.
    pub pipe_ends: HashMap<u32, Vec<u32>>,
    /// Unix socket inode -> file ids of the entries with that inode.
    pub usk_by_ino: HashMap<u32, Vec<u32>>,
    /// Unix socket peer inode -> file ids of the entries with that peer.
    pub usk_by_peer: HashMap<u32, Vec<u32>>,
}

struct Memo {
    map: usize,
    len: usize,
    index: Arc<Index>,
}

static MEMO: RwLock<Option<Memo>> = RwLock::new(None);

fn key(files: &HashMap<u32, FileEntry>) -> (usize, usize) {
    (
        files as *const HashMap<u32, FileEntry> as usize,
        files.len(),
    )
}

/// Unix socket indexes of `files` (by inode, by peer inode).
pub(crate) fn usk_maps(
    files: &HashMap<u32, FileEntry>,
) -> (HashMap<u32, Vec<u32>>, HashMap<u32, Vec<u32>>) {
    let mut by_ino: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut by_peer: HashMap<u32, Vec<u32>> = HashMap::new();
    for f in files.values() {
        if let Some(e) = f.usk.as_ref() {
            if e.ino != 0 {
                by_ino.entry(e.ino).or_default().push(e.id);
            }
            if e.peer != 0 {
                by_peer.entry(e.peer).or_default().push(e.id);
            }
        }
    }
    (by_ino, by_peer)
}

/// Builds the indexes of `files`, the map the rest of this restore uses
/// (it must stay where it is, unchanged, while they are used).
pub fn prepare(files: &HashMap<u32, FileEntry>) {
    let mut ix = Index::default();
    for f in files.values() {
        if let Some(p) = &f.pipe {
            ix.pipe_ends.entry(p.pipe_id).or_default().push(f.id);
        }
    }
    (ix.usk_by_ino, ix.usk_by_peer) = usk_maps(files);
    let (map, len) = key(files);
    let memo = Memo {
        map,
        len,
        index: Arc::new(ix),
    };
    *MEMO.write().unwrap_or_else(|e| e.into_inner()) = Some(memo);
}

/// The indexes of `files` if [`prepare`] built them for this map.
pub(crate) fn get(files: &HashMap<u32, FileEntry>) -> Option<Arc<Index>> {
    let g = MEMO.read().unwrap_or_else(|e| e.into_inner());
    let m = g.as_ref()?;
    ((m.map, m.len) == key(files)).then(|| m.index.clone())
}
