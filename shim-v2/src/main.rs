//! `containerd-shim-stasis-v2`: the containerd shim v2 for runtime
//! `io.containerd.stasis.v2`. It runs the container with the stasis OCI
//! library inside the shim process (no runc, no criu binary): containerd
//! starts one shim per container, talks to it over ttrpc (task API v2,
//! which containerd 1.6 speaks) and receives task events from it.
#![deny(unsafe_code)]

mod io;
mod service;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim as shim;
use shim::{api, publisher::RemotePublisher, Config, ExitSignal, Flags};

use service::Service;

/// The shim as containerd drives it: `start` (spawn the daemon, print its
/// address), `delete` (clean up after a dead daemon) and the daemon itself.
struct Shim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    bundle: PathBuf,
}

/// Where the stasis runtime keeps its container state: inside the bundle,
/// so two containerd instances (own state dirs) never share it.
pub fn runtime_root(bundle: &Path) -> PathBuf {
    bundle.join("stasis")
}

impl shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Shim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> shim::Result<String> {
        let grouping = opts.id.clone();
        let (pid, address) = shim::spawn(opts, &grouping, Vec::new())?;
        // containerd 1.6 passes no socket dir: the daemon removes the socket
        // named in this file when it exits.
        shim::util::write_address(&address)?;
        let _ = std::fs::write("shim.pid", pid.to_string());
        Ok(address)
    }

    fn delete_shim(&mut self) -> shim::Result<api::DeleteResponse> {
        // The daemon is gone (or never served): kill what is left of the
        // container and release its rootfs.
        let rt = stasis_oci::Runtime::new(runtime_root(&self.bundle));
        let pid = rt.load(&self.id).map(|s| s.pid).unwrap_or(0);
        if let Err(e) = rt.delete(&self.id, true) {
            shim::warn!("delete {}: {e}", self.id);
        }
        io::unmount_rootfs(&self.bundle);
        let mut r = api::DeleteResponse::new();
        r.pid = pid.max(0) as u32;
        r.exit_status = 128 + libc::SIGKILL as u32;
        r.exited_at = shim::util::timestamp().ok().into();
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service::new(
            self.namespace.clone(),
            self.bundle.clone(),
            self.exit.clone(),
            publisher,
        )
    }
}

fn main() {
    shim::run::<Shim>("io.containerd.stasis.v2", None)
}
