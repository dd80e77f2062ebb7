//! A process's stdio as containerd hands it over: FIFO paths (or none),
//! bridged to the container through pipes (so CloseIO can deliver EOF on
//! stdin) or through a pty whose master comes back over a console socket.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use containerd_shim as shim;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Output copies still running (stdout, stderr or the pty), so the exit of
/// a process is reported only once its output reached containerd.
#[derive(Default)]
pub struct Pending {
    n: Mutex<usize>,
    cv: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.n.lock().unwrap() += 1;
    }

    fn done(&self) {
        *self.n.lock().unwrap() -= 1;
        self.cv.notify_all();
    }

    /// Waits for the copies to drain; bounded, because a process left
    /// behind in the container may still hold the pipe open.
    pub fn wait(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let mut n = self.n.lock().unwrap();
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            n = self.cv.wait_timeout(n, left).unwrap().0;
        }
    }
}

pub struct ProcIo {
    /// The process's ends (stdin, stdout, stderr) until it is spawned.
    child: Option<[OwnedFd; 3]>,
    /// Our write end of its stdin pipe, or the pty master; CloseIO drops it.
    stdin: Arc<Mutex<Option<File>>>,
    closing: Arc<AtomicBool>,
    /// The pty master, for ResizePty.
    pub console: Option<File>,
    console_sock: Option<(PathBuf, UnixListener)>,
    stdin_path: String,
    stdout_path: String,
    pub pending: Arc<Pending>,
}

fn open_fifo(path: &str) -> std::io::Result<File> {
    // Read-write: never blocks on a missing peer and never gets EPIPE when
    // the client (ctr -d) has gone away.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

fn dev_null() -> Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?
        .into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")
}

/// Copies `from` into the FIFO at `to` until EOF (or EIO from a pty
/// master whose slave side closed), then closes the FIFO so the client
/// sees EOF.
fn copy_out(mut from: File, to: String, pending: Arc<Pending>) {
    pending.add();
    std::thread::spawn(move || {
        let mut out = match open_fifo(&to) {
            Ok(f) => Some(f),
            Err(e) => {
                shim::warn!("open {to}: {e}");
                None
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(o) = out.as_mut() {
                        if o.write_all(&buf[..n]).is_err() {
                            out = None;
                        }
                    }
                }
            }
        }
        drop(out);
        pending.done();
    });
}

/// Copies the stdin FIFO into the process until the client closes it
/// (EOF, as runc's shim does) or sends CloseIO; what the client wrote
/// before CloseIO is passed on first.
fn copy_in(from: String, to: Arc<Mutex<Option<File>>>, closing: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        // Blocks until the client opens its end.
        let mut f = match File::open(&from) {
            Ok(f) => f,
            Err(e) => {
                shim::warn!("open {from}: {e}");
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
            let ready = nix::poll::poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0);
            if ready == 0 {
                if closing.load(Ordering::Acquire) {
                    break;
                }
                continue;
            }
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut g = to.lock().unwrap();
                    let Some(w) = g.as_mut() else { return };
                    if w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        to.lock().unwrap().take();
    });
}

static CONSOLE_SEQ: AtomicUsize = AtomicUsize::new(0);

impl ProcIo {
    /// Pipes to the process, copied to and from the FIFOs in threads.
    pub fn pipes(stdin: &str, stdout: &str, stderr: &str) -> Result<ProcIo> {
        let pending = Arc::new(Pending::default());
        let writer = Arc::new(Mutex::new(None));
        let closing = Arc::new(AtomicBool::new(false));
        let cin = if stdin.is_empty() {
            dev_null()?
        } else {
            let (r, w) = pipe()?;
            *writer.lock().unwrap() = Some(File::from(w));
            copy_in(stdin.to_string(), writer.clone(), closing.clone());
            r
        };
        let out = |path: &str| -> Result<OwnedFd> {
            if path.is_empty() {
                return dev_null();
            }
            let (r, w) = pipe()?;
            copy_out(File::from(r), path.to_string(), pending.clone());
            Ok(w)
        };
        let cout = out(stdout)?;
        let cerr = out(stderr)?;
        Ok(ProcIo {
            child: Some([cin, cout, cerr]),
            stdin: writer,
            closing,
            console: None,
            console_sock: None,
            stdin_path: String::new(),
            stdout_path: String::new(),
            pending,
        })
    }

    /// A console socket the process sends its pty master to; the copies
    /// start in [`ProcIo::attach_console`].
    pub fn terminal(stdin: &str, stdout: &str) -> Result<ProcIo> {
        let path = std::env::temp_dir().join(format!(
            "stasis-shim-{}-{}.sock",
            std::process::id(),
            CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path)
            .with_context(|| format!("console socket {}", path.display()))?;
        Ok(ProcIo {
            child: Some([dev_null()?, dev_null()?, dev_null()?]),
            stdin: Arc::new(Mutex::new(None)),
            closing: Arc::new(AtomicBool::new(false)),
            console: None,
            console_sock: Some((path, l)),
            stdin_path: stdin.to_string(),
            stdout_path: stdout.to_string(),
            pending: Arc::new(Pending::default()),
        })
    }

    pub fn console_socket(&self) -> Option<PathBuf> {
        self.console_sock.as_ref().map(|(p, _)| p.clone())
    }

    /// fds for the library to install as the process's stdio.
    pub fn child_fds(&self) -> Option<[RawFd; 3]> {
        self.child
            .as_ref()
            .map(|c| [c[0].as_raw_fd(), c[1].as_raw_fd(), c[2].as_raw_fd()])
    }

    /// After the spawn: drop our copies of the process's ends (so EOF
    /// comes when it exits) and, with a terminal, take the pty master.
    pub fn attach(&mut self) -> Result<()> {
        self.child = None;
        let Some((path, l)) = self.console_sock.take() else {
            return Ok(());
        };
        let _ = std::fs::remove_file(&path);
        // The library connected before the fork; the master is queued.
        l.set_nonblocking(true).context("console socket")?;
        let (s, _): (UnixStream, _) = l.accept().context("console socket: no connection")?;
        s.set_nonblocking(false).context("console socket")?;
        let master = File::from(stasis_oci::tty::recv_master(&s)?);
        if !self.stdout_path.is_empty() {
            copy_out(
                master.try_clone().context("dup pty master")?,
                self.stdout_path.clone(),
                self.pending.clone(),
            );
        }
        if !self.stdin_path.is_empty() {
            *self.stdin.lock().unwrap() = Some(master.try_clone().context("dup pty master")?);
            copy_in(
                self.stdin_path.clone(),
                self.stdin.clone(),
                self.closing.clone(),
            );
        }
        self.console = Some(master);
        Ok(())
    }

    /// CloseIO (or the process's exit): EOF on its stdin once what the
    /// client wrote is through (with a pty, stop feeding it).
    pub fn close_stdin(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(m) = &self.console else {
            anyhow::bail!("process has no terminal");
        };
        stasis_oci::tty::resize(m.as_fd(), height as u16, width as u16)?;
        Ok(())
    }
}

impl Drop for ProcIo {
    fn drop(&mut self) {
        if let Some((p, _)) = &self.console_sock {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Mounts containerd's rootfs mounts (the snapshot) on `<bundle>/rootfs`.
pub fn mount_rootfs(bundle: &Path, mounts: &[shim::protos::types::mount::Mount]) -> Result<()> {
    let target = bundle.join("rootfs");
    for m in mounts {
        shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()).filter(|s| !s.is_empty()),
            &m.options,
            &target,
        )
        .with_context(|| format!("mount {} on {}", m.source, target.display()))?;
    }
    Ok(())
}

pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Some(t) = target.to_str() {
        if let Err(e) = shim::mount::umount_recursive(Some(t), libc::MNT_DETACH) {
            shim::warn!("unmount {t}: {e}");
        }
    }
}
