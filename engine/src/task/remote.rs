//! Running syscalls inside a stopped target ("remote calls") and a scratch
//! buffer there for their in/out arguments.
//!
//! No code is planted in the target: a `syscall` instruction of its vDSO (or
//! of our restore scratch page) is executed with the registers we choose,
//! then the thread's registers are put back.

use std::collections::HashMap;

use crate::error::{Error, Result, TaskCtx};
use crate::sys::inject::{find_syscall_insn, Injector, StepMode, BATCH_CODE, BATCH_ENTRY};
use crate::sys::vm;

pub const SCRATCH_LEN: u64 = 16 * 4096;
/// Where the syscall-batch table lives in the scratch area (its second half;
/// the first page holds code, the rest is for call arguments).
pub const BATCH_TABLE: u64 = SCRATCH_LEN / 2;
const BATCH_MAX: usize = ((SCRATCH_LEN - BATCH_TABLE) as usize) / BATCH_ENTRY;

/// One syscall of a batch: number and arguments.
pub type Call = (i64, [u64; 6]);

/// Remote-call context of one process. One injector per thread is kept
/// until [`Remote::finish`] (or drop) puts every thread's registers back.
pub struct Remote {
    pub pid: i32,
    pub syscall_ip: u64,
    scratch: Option<u64>,
    mode: Option<StepMode>,
    threads: HashMap<i32, Injector>,
    /// Address of the syscall-batch loop, when one is mapped and usable.
    batch_code: Option<u64>,
    /// The target ignores SIGTRAP: no batches (their int3 would reset it).
    sigtrap_ignored: bool,
    /// [`finish`](Self::finish) leaves no thread with the trap flag of a
    /// single step (its last call runs with syscall stops): a dump goes on
    /// with the target stopped, and if the dumper is killed meanwhile, the
    /// kernel's implicit detach leaves that flag, which kills the thread.
    clear_step_flags: bool,
}

impl Remote {
    /// Find a syscall instruction in the target's vDSO.
    pub fn new(pid: i32, vdso: Option<(u64, u64)>) -> Result<Remote> {
        let ign = crate::proc::read_status(pid)
            .map(|s| s.sig_ign)
            .unwrap_or(u64::MAX);
        Self::with_sig_ign(pid, vdso, ign)
    }

    /// [`new`](Self::new) for a caller that has read the process's
    /// `SigIgn` already (one /proc read fewer per dumped process).
    pub fn with_sig_ign(pid: i32, vdso: Option<(u64, u64)>, sig_ign: u64) -> Result<Remote> {
        let (start, end) = vdso.ok_or_else(|| {
            Error::unsupported(
                pid,
                "has no [vdso]; remote calls need its syscall instruction",
            )
        })?;
        let ip = find_syscall_insn(pid, start, end).task_ctx(pid, "find syscall in vdso")?;
        let ign = sig_ign & (1 << (libc::SIGTRAP - 1)) != 0;
        Ok(Remote {
            pid,
            syscall_ip: ip,
            scratch: None,
            // One stop per remote syscall instead of two, under the same
            // condition as the batch's int3: a forced SIGTRAP would reset
            // an ignored one.
            mode: (!ign).then_some(StepMode::SingleStep),
            threads: HashMap::new(),
            batch_code: None,
            sigtrap_ignored: ign,
            clear_step_flags: true,
        })
    }

    /// Use an explicit syscall instruction address (restore's scratch page).
    /// Our own restore stubs never ignore SIGTRAP, so single-stepping is safe
    /// and the per-thread check is skipped.
    /// Restore stubs carry the batch loop at `syscall_ip + 16`.
    pub fn with_ip(pid: i32, syscall_ip: u64) -> Remote {
        Remote {
            pid,
            syscall_ip,
            scratch: None,
            mode: Some(StepMode::SingleStep),
            threads: HashMap::new(),
            batch_code: Some(syscall_ip + 16),
            sigtrap_ignored: false,
            // The restorer detaches explicitly (with no signal) right after.
            clear_step_flags: false,
        }
    }

    /// Run `calls` in thread `tid` and return their raw results. With the
    /// batch loop mapped this is one round trip per 512 calls; otherwise one
    /// remote syscall each.
    pub fn batch(&mut self, tid: i32, calls: &[Call]) -> Result<Vec<i64>> {
        let (Some(code), false) = (self.batch_code, self.sigtrap_ignored) else {
            return calls.iter().map(|&(nr, a)| self.raw(tid, nr, a)).collect();
        };
        let table = code - (code % 4096) + BATCH_TABLE;
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(BATCH_MAX) {
            let mut t = Vec::with_capacity(chunk.len() * BATCH_ENTRY);
            for &(nr, a) in chunk {
                t.extend_from_slice(&(nr as u64).to_ne_bytes());
                for x in a {
                    t.extend_from_slice(&x.to_ne_bytes());
                }
                t.extend_from_slice(&0u64.to_ne_bytes());
            }
            self.write(table, &t)?;
            self.injector(tid)?
                .run_batch(code, table, chunk.len())
                .task_ctx(tid, "run syscall batch")?;
            self.read(table, &mut t)?;
            out.extend(
                t.chunks_exact(BATCH_ENTRY)
                    .map(|e| i64::from_ne_bytes(e[56..64].try_into().unwrap())),
            );
        }
        Ok(out)
    }

    /// Whether [`batch`](Self::batch) runs many calls in one round trip
    /// (once the scratch is mapped), not one remote syscall each.
    pub fn batches(&self) -> bool {
        self.batch_code.is_some() && !self.sigtrap_ignored
    }

    /// Like [`batch`](Self::batch), failing on the first negative result
    /// with `what[i]` naming the call.
    pub fn batch_checked(&mut self, tid: i32, calls: &[Call], what: &[&str]) -> Result<Vec<u64>> {
        let res = self.batch(tid, calls)?;
        res.iter()
            .enumerate()
            .map(|(i, &r)| {
                if (-4095..0).contains(&r) {
                    Err(Error::task(
                        tid,
                        format!("remote {}", what.get(i).copied().unwrap_or("syscall")),
                        std::io::Error::from_raw_os_error(-r as i32),
                    ))
                } else {
                    Ok(r as u64)
                }
            })
            .collect()
    }

    /// The injector of `tid`, created (registers saved) on first use.
    pub fn injector(&mut self, tid: i32) -> Result<&mut Injector> {
        if !self.threads.contains_key(&tid) {
            let inj = match self.mode {
                Some(m) => Injector::with_mode(tid, self.syscall_ip, m),
                None => Injector::new(tid, self.syscall_ip),
            }
            .task_ctx(tid, "save registers")?;
            self.threads.insert(tid, inj);
        }
        Ok(self.threads.get_mut(&tid).unwrap())
    }

    /// Run one syscall in thread `tid`. Returns the raw result (negative
    /// errno on failure).
    pub fn raw(&mut self, tid: i32, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.injector(tid)?
            .syscall(nr, args)
            .task_ctx(tid, &format!("remote syscall {nr}"))
    }

    /// Put back the registers and signal mask of every thread we used.
    pub fn finish(mut self) -> Result<()> {
        self.settle()?;
        for (tid, inj) in self.threads.drain() {
            inj.restore().task_ctx(tid, "restore registers")?;
        }
        Ok(())
    }

    /// Unmap the scratch area and, for a dump, leave no thread with the
    /// trap flag of a single step (see `clear_step_flags`).
    fn settle(&mut self) -> Result<()> {
        let clear = self.clear_step_flags;
        if clear {
            for (&tid, inj) in self.threads.iter_mut() {
                inj.set_mode(StepMode::SyscallStops)
                    .task_ctx(tid, "switch to syscall stops")?;
            }
        }
        // The main thread's last call, not a step.
        self.unmap_scratch()?;
        if clear {
            for (&tid, inj) in self.threads.iter_mut() {
                if inj.stepped() {
                    inj.syscall(libc::SYS_getpid, [0; 6])
                        .task_ctx(tid, "clear the trap flag")?;
                }
            }
        }
        Ok(())
    }

    /// Forget the injector of `tid` without touching the thread (restore
    /// loads final registers itself).
    pub fn take(&mut self, tid: i32) -> Option<Injector> {
        self.threads.remove(&tid)
    }

    /// Like [`raw`](Self::raw) but a negative result is an error naming the call.
    pub fn call(&mut self, tid: i32, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.raw(tid, nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::task(
                tid,
                format!("remote {what}"),
                std::io::Error::from_raw_os_error(-r as i32),
            ));
        }
        Ok(r as u64)
    }

    /// Map a private scratch area in the target (for syscall arguments).
    pub fn map_scratch(&mut self) -> Result<u64> {
        if let Some(a) = self.scratch {
            return Ok(a);
        }
        let a = self.call(
            self.pid,
            "mmap scratch",
            libc::SYS_mmap,
            [
                0,
                SCRATCH_LEN,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        self.scratch = Some(a);
        // The batch loop sits at the start; data goes from SCRATCH_DATA on.
        self.write(a, &BATCH_CODE)?;
        self.batch_code = Some(a);
        Ok(a)
    }

    pub fn scratch(&self) -> u64 {
        self.scratch.expect("scratch mapped")
    }

    /// Remove the scratch area again (also done, best effort, on drop).
    pub fn unmap_scratch(&mut self) -> Result<()> {
        if let Some(a) = self.scratch.take() {
            self.batch_code = None;
            self.call(
                self.pid,
                "munmap scratch",
                libc::SYS_munmap,
                [a, SCRATCH_LEN, 0, 0, 0, 0],
            )?;
        }
        Ok(())
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        vm::read_remote_into(self.pid, addr, buf).task_ctx(self.pid, "read target memory")
    }

    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
        vm::write_remote_from(self.pid, addr, buf).task_ctx(self.pid, "write target memory")
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Best effort: the scratch area goes, no trap flag stays.
        let _ = self.settle();
        // Dropping an injector restores its thread (best effort).
        self.threads.clear();
    }
}
