//! Per-container state: `<root>/<id>/state.json` (ours), and the OCI state
//! that `stasis state` prints (runc's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::error::{Error, IoCtx, Result};
use crate::util;

pub const OCI_VERSION: &str = "1.0.2-dev";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Its start time (ticks since boot), to tell it from a reused pid.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: u32,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub cgroup: Option<Cgroup>,
    /// The bundle's config as it was at create time (hooks, exec defaults).
    pub spec: Spec,
}

impl State {
    pub fn dir(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    pub fn load(root: &Path, id: &str) -> Result<State> {
        let p = Self::dir(root, id).join("state.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotExist),
            Err(e) => return Err(e).at(&p),
        };
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", p.display())))
    }

    /// Write atomically (rename), so readers never see half a file.
    pub fn save(&self, root: &Path) -> Result<()> {
        let dir = Self::dir(root, &self.id);
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec(self).map_err(Error::msg)?;
        std::fs::write(&tmp, text).at(&tmp)?;
        let p = dir.join("state.json");
        std::fs::rename(&tmp, &p).at(&p)
    }

    pub fn fifo(&self, root: &Path) -> PathBuf {
        Self::dir(root, &self.id).join("exec.fifo")
    }

    pub fn status(&self, root: &Path) -> Status {
        if self.pid <= 0 || !util::alive(self.pid, self.start_time) {
            return Status::Stopped;
        }
        if self.fifo(root).exists() {
            return Status::Created;
        }
        if self.cgroup.as_ref().is_some_and(|c| c.frozen()) {
            return Status::Paused;
        }
        Status::Running
    }

    /// The OCI state document (runc's field order and spelling).
    pub fn oci(&self, status: Status, owner: &str) -> serde_json::Value {
        let pid = if status == Status::Stopped {
            0
        } else {
            self.pid
        };
        let mut v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": pid,
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": owner,
        });
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::to_value(&self.annotations).unwrap_or_default();
        }
        v
    }

    /// The state hooks get on stdin.
    pub fn hook_state(&self, status: &str) -> String {
        serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid,
            "status": status,
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
        .to_string()
    }
}
