//! `--inherit-fd fd[N]:KEY`: a file of the image is the caller's fd N
//! instead of being recreated (runc passes the container's stdio this
//! way). KEY is what CRIU prints for the file: `pipe:[INO]`,
//! `socket:[INO]`, or a regular file's path.

use stasis_proto::criu::FileEntry;

use super::plan::Plan;
use super::Prep;
use crate::error::{Error, Result};
use crate::files::{self, Group};

/// The keys a file object answers to.
pub fn keys_of(f: &FileEntry) -> Vec<String> {
    let mut k = Vec::new();
    if let Some(p) = &f.pipe {
        k.push(format!("pipe:[{}]", p.pipe_id));
    }
    if let Some(u) = &f.usk {
        k.push(format!("socket:[{}]", u.ino));
    }
    if let Some(r) = &f.reg {
        k.push(r.name.clone());
    }
    k
}

/// Stage the caller's fds where the matching files would have been made,
/// and drop their groups from creation. Every member of a group must be
/// inherited (one end of a pipe inside the tree cannot be the caller's
/// while the other is recreated).
pub fn apply(plan: &Plan, prep: &mut Prep, inherit: &[(i32, String)]) -> Result<()> {
    if inherit.is_empty() {
        return Ok(());
    }
    let matches = |id: &u32| -> Option<i32> {
        let f = plan.files.get(id)?;
        let keys = keys_of(f);
        inherit
            .iter()
            .find(|(_, k)| keys.iter().any(|x| x == k))
            .map(|(n, _)| *n)
    };
    let mut ids: Vec<u32> = prep.shared.keys().copied().collect();
    ids.sort();
    let mut used = vec![false; inherit.len()];
    let mut groups: Vec<Group> = Vec::new();
    for id in &ids {
        let Some(n) = matches(id) else { continue };
        if let Some(i) = inherit.iter().position(|(m, _)| *m == n) {
            used[i] = true;
        }
        let g = files::group_of(&plan.files[id], &plan.files);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in &groups {
        for id in &ids {
            if files::group_of(&plan.files[id], &plan.files) == *g && matches(id).is_none() {
                return Err(Error::Other(format!(
                    "--inherit-fd: file {id} ({}) shares its object with an inherited one but \
                     is not inherited itself",
                    keys_of(&plan.files[id]).join(", ")
                )));
            }
        }
    }
    for (i, (n, k)) in inherit.iter().enumerate() {
        if !used[i] {
            return Err(Error::Other(format!(
                "--inherit-fd fd[{n}]:{k}: no file with that key in the images"
            )));
        }
    }
    prep.owner.retain(|(g, _)| !groups.contains(g));
    for id in ids {
        let Some(n) = matches(&id) else { continue };
        let at = prep.shared[&id];
        nix::unistd::dup2(n, at)
            .map_err(|e| Error::Other(format!("--inherit-fd fd[{n}]: dup2 to {at}: {e}")))?;
        tracing::info!(fd = n, file = id, "file inherited from the caller");
    }
    Ok(())
}
