//! Running syscalls inside a stopped target ("remote calls") and a scratch
//! buffer there for their in/out arguments.
//!
//! No code is planted in the target: a `syscall` instruction of its vDSO (or
//! of our restore scratch page) is executed with the registers we choose,
//! then the thread's registers are put back.

use std::collections::HashMap;

use crate::error::{Error, Result, TaskCtx};
use crate::sys::inject::{
    find_syscall_insn, Injector, StepMode, BATCH_CODE, BATCH_ENTRY, EXIT_LOOP_AT, EXIT_LOOP_CODE,
    SPAWN_AT, SPAWN_CODE,
};
use crate::sys::vm;

pub const SCRATCH_LEN: u64 = 16 * 4096;
/// Where the syscall-batch table lives in the scratch area (its second half;
/// the first page holds code, the rest is for call arguments).
pub const BATCH_TABLE: u64 = SCRATCH_LEN / 2;
pub const BATCH_MAX: usize = ((SCRATCH_LEN - BATCH_TABLE) as usize) / BATCH_ENTRY;

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
        Ok(Remote::at(pid, ip, sig_ign))
    }

    /// Use the syscall instruction at `syscall_ip` (see [`vdso_syscall_ip`])
    /// of a process whose `SigIgn` is `sig_ign`.
    pub fn at(pid: i32, syscall_ip: u64, sig_ign: u64) -> Remote {
        let ign = crate::task::signals::ignores_trap(sig_ign);
        Remote {
            pid,
            syscall_ip,
            scratch: None,
            // One stop per remote syscall instead of two, under the same
            // condition as the batch's int3: a forced SIGTRAP would reset
            // an ignored one.
            mode: (!ign).then_some(StepMode::SingleStep),
            threads: HashMap::new(),
            batch_code: None,
            sigtrap_ignored: ign,
            clear_step_flags: true,
        }
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
        let table = batch_table_at(code);
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(BATCH_MAX) {
            let mut t = batch_table(chunk);
            self.write(table, &t)?;
            self.injector(tid)?
                .run_batch(code, table, chunk.len())
                .task_ctx(tid, "run syscall batch")?;
            self.read(table, &mut t)?;
            out.extend(batch_results(&t));
        }
        Ok(out)
    }

    /// Whether [`batch`](Self::batch) runs many calls in one round trip
    /// (once the scratch is mapped), not one remote syscall each.
    pub fn batches(&self) -> bool {
        self.batch_code.is_some() && !self.sigtrap_ignored
    }

    /// A context for a process whose scratch area `kept` is still mapped
    /// (see [`keep_scratch`](Self::keep_scratch)); it owns the area again.
    pub fn from_kept(kept: Kept, sig_ign: u64) -> Remote {
        let mut r = Remote::at(kept.pid, kept.syscall_ip, sig_ign);
        r.scratch = Some(kept.addr);
        r.batch_code = Some(kept.addr);
        kept.forget();
        r
    }

    /// [`map_scratch`](Self::map_scratch) in two halves, so that many
    /// processes run theirs at once: this one starts the mmap...
    pub fn begin_map_scratch(&mut self) -> Result<()> {
        let pid = self.pid;
        self.begin_call(pid, "mmap scratch", libc::SYS_mmap, scratch_mmap_args())
    }

    /// ... and this one waits for it and returns the area.
    pub fn end_map_scratch(&mut self) -> Result<u64> {
        let a = self.end_call(self.pid, "mmap scratch")?;
        self.scratch_mapped(a)
    }

    /// [`batch`](Self::batch) of at most [`BATCH_MAX`] calls in two halves
    /// (see [`begin_map_scratch`](Self::begin_map_scratch)): this one
    /// starts it, [`end_batch`](Self::end_batch) waits.
    pub fn begin_batch(&mut self, tid: i32, calls: &[Call]) -> Result<()> {
        let (Some(code), true) = (self.batch_code, self.batches()) else {
            return Err(Error::task(
                tid,
                "remote batch",
                std::io::Error::other("no batch loop in this process"),
            ));
        };
        if calls.len() > BATCH_MAX {
            return Err(Error::task(
                tid,
                "remote batch",
                std::io::Error::other(format!("{} calls, at most {BATCH_MAX}", calls.len())),
            ));
        }
        let table = batch_table_at(code);
        self.write(table, &batch_table(calls))?;
        self.injector(tid)?
            .begin_batch(code, table, calls.len())
            .task_ctx(tid, "run syscall batch")
    }

    /// The results of the `n` calls started by [`begin_batch`](Self::begin_batch).
    pub fn end_batch(&mut self, tid: i32, n: usize) -> Result<Vec<i64>> {
        self.injector(tid)?
            .end_batch()
            .task_ctx(tid, "run syscall batch")?;
        let code = self.batch_code.expect("batch started");
        let table = batch_table_at(code);
        let mut t = vec![0u8; n * BATCH_ENTRY];
        self.read(table, &mut t)?;
        Ok(batch_results(&t))
    }

    /// Put back every thread's registers like [`finish`](Self::finish), but
    /// leave the scratch area mapped (with the batch's results in it) for
    /// later: the returned token unmaps it, see [`unmap_kept`]. No thread
    /// keeps a single step's trap flag.
    pub fn keep_scratch(mut self) -> Result<Option<Kept>> {
        if self.clear_step_flags {
            self.clear_steps()?;
        }
        for (tid, inj) in self.threads.drain() {
            inj.restore().task_ctx(tid, "restore registers")?;
        }
        Ok(self.scratch.take().map(|addr| Kept {
            pid: self.pid,
            addr,
            syscall_ip: self.syscall_ip,
        }))
    }

    /// Run `calls` on a new thread of the process, which exits after the
    /// last one: thread `tid` only clones it (one round trip, with the
    /// scratch area's batch table). The new thread is not traced and runs
    /// the calls, with `tid`'s signal mask and seccomp filters, whether or
    /// not we are still there. Its tid, as the process's pid namespace
    /// sees it, is stored at `tid_word` (in the scratch area) and returned;
    /// None if the clone was refused. Its results are read
    /// with [`spawned_results`](Self::spawned_results) once it has exited.
    pub fn spawn_batch(&mut self, tid: i32, calls: &[Call], tid_word: u64) -> Result<Option<i32>> {
        let code = self
            .batch_code
            .filter(|_| !self.sigtrap_ignored)
            .ok_or_else(|| {
                Error::task(
                    tid,
                    "spawn a batch thread",
                    std::io::Error::other("no batch code"),
                )
            })?;
        if calls.len() >= BATCH_MAX {
            return Err(Error::Other(format!(
                "pid {tid}: {} calls are too many for one batch thread",
                calls.len()
            )));
        }
        let flags = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_PARENT_SETTID;
        let clone: Call = (libc::SYS_clone, [flags as u64, 0, tid_word, 0, 0, 0]);
        let mut all = Vec::with_capacity(calls.len() + 1);
        all.push(clone);
        all.extend_from_slice(calls);
        self.write(code + SPAWN_AT, &SPAWN_CODE)?;
        self.write(code + EXIT_LOOP_AT, &EXIT_LOOP_CODE)?;
        self.write(tid_word, &0u64.to_ne_bytes())?;
        let table = batch_table_at(code);
        self.write(table, &batch_table(&all))?;
        let spawn = code + SPAWN_AT;
        self.injector(tid)?
            .run_code(spawn, spawn + SPAWN_CODE.len() as u64, table, all.len())
            .task_ctx(tid, "spawn a batch thread")?;
        // The clone's own result slot is shared with the new thread (which
        // stores its 0 there too): the tid word tells.
        let new = self.read_u64(tid_word)? as u32 as i32;
        if new > 0 {
            return Ok(Some(new));
        }
        let mut e = [0u8; BATCH_ENTRY];
        self.read(table, &mut e)?;
        let r = batch_results(&e)[0];
        tracing::debug!(tid, result = r, "clone of a batch thread refused");
        Ok(None)
    }

    /// The results of the `n` calls of the last [`spawn_batch`]
    /// (Self::spawn_batch), once its thread has exited.
    pub fn spawned_results(&self, n: usize) -> Result<Vec<i64>> {
        let code = self
            .batch_code
            .ok_or_else(|| Error::Other("no batch code".into()))?;
        let mut t = vec![0u8; (n + 1) * BATCH_ENTRY];
        self.read(batch_table_at(code), &mut t)?;
        Ok(batch_results(&t[BATCH_ENTRY..]))
    }

    /// Like [`batch`](Self::batch), failing on the first negative result
    /// with `what[i]` naming the call.
    pub fn batch_checked(&mut self, tid: i32, calls: &[Call], what: &[&str]) -> Result<Vec<u64>> {
        let res = self.batch(tid, calls)?;
        check_all(tid, &res, what)
    }

    /// [`batch`](Self::batch) in two halves, so that many tasks run theirs
    /// at once: started here when the calls fit one batch (otherwise run to
    /// the end now), their results come from [`wait`](Self::wait). The
    /// results of the first `what.len()` calls are checked, `what[i]`
    /// naming call `i`.
    pub fn start(&mut self, tid: i32, calls: &[Call], what: Vec<&'static str>) -> Result<Pending> {
        let run = if self.batches() && calls.len() <= BATCH_MAX {
            self.begin_batch(tid, calls)?;
            Run::Running(calls.len())
        } else {
            Run::Done(self.batch(tid, calls)?)
        };
        Ok(Pending { tid, run, what })
    }

    /// The raw results of the calls [`start`](Self::start)ed.
    pub fn wait(&mut self, p: Pending) -> Result<Vec<i64>> {
        let res = match p.run {
            Run::Running(n) => self.end_batch(p.tid, n)?,
            Run::Done(res) => res,
        };
        check_all(p.tid, &res[..p.what.len().min(res.len())], &p.what)?;
        Ok(res)
    }
}

/// A batch of remote calls under way (see [`Remote::start`]).
#[derive(Debug)]
pub struct Pending {
    tid: i32,
    run: Run,
    what: Vec<&'static str>,
}

#[derive(Debug)]
enum Run {
    /// Started, with this many calls.
    Running(usize),
    /// Already run (it did not fit one batch): the results.
    Done(Vec<i64>),
}

/// A scratch area left mapped in a stopped process by
/// [`Remote::keep_scratch`]; dropping it unmaps it (best effort, one remote
/// call), [`unmap_kept`] unmaps many at once, [`Kept::forget`] leaves it
/// (the process is killed).
#[derive(Debug)]
pub struct Kept {
    pub pid: i32,
    pub addr: u64,
    pub syscall_ip: u64,
}

impl Kept {
    /// The process is going away: nothing to undo.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let pid = self.pid;
        let r = Injector::new(pid, self.syscall_ip).and_then(|mut inj| {
            inj.syscall(libc::SYS_munmap, [self.addr, SCRATCH_LEN, 0, 0, 0, 0])?;
            inj.restore()
        });
        if let Err(e) = r {
            tracing::warn!(pid, error = %e, "unmapping the remote scratch area failed");
        }
    }
}

/// Unmap the scratch areas of `kept`, every process's munmap running at
/// once. Syscall stops, not single steps: no trap flag is left behind.
pub fn unmap_kept(kept: Vec<Kept>) -> Result<()> {
    let mut started = Vec::with_capacity(kept.len());
    for k in kept {
        let mut inj = Injector::new(k.pid, k.syscall_ip).task_ctx(k.pid, "save registers")?;
        inj.begin_syscall(libc::SYS_munmap, [k.addr, SCRATCH_LEN, 0, 0, 0, 0])
            .task_ctx(k.pid, "remote munmap scratch")?;
        started.push((k, inj));
    }
    let mut first_err = None;
    for (k, mut inj) in started {
        let pid = k.pid;
        let r = inj
            .end_syscall()
            .task_ctx(pid, "remote munmap scratch")
            .and_then(|r| check(pid, "munmap scratch", r))
            .and_then(|_| inj.restore().task_ctx(pid, "restore registers"));
        match r {
            Ok(()) => k.forget(),
            // The token's drop tries once more.
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The address of a `syscall` instruction in the vDSO of `pid`, found
/// without reading its maps: the vDSO text is the same in every 64-bit
/// process of this kernel, so the instruction's offset is looked up once in
/// our own, and the process's vDSO base comes from its auxv
/// (AT_SYSINFO_EHDR). None if its vDSO was moved or unmapped (the two bytes
/// read there are not that instruction): then find it in its maps.
pub fn vdso_syscall_ip(pid: i32, auxv: &[(u64, u64)]) -> Option<u64> {
    static OFFSET: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let off = (*OFFSET.get_or_init(|| {
        let me = std::process::id() as i32;
        let base = crate::sys::misc::own_auxval(libc::AT_SYSINFO_EHDR);
        let mut head = [0u8; 4096];
        vm::read_remote_into(me, base, &mut head).ok()?;
        let end = base + elf_image_len(&head)?;
        find_syscall_insn(me, base, end).ok().map(|ip| ip - base)
    }))?;
    let ip = crate::proc::auxv_get(auxv, libc::AT_SYSINFO_EHDR)? + off;
    let mut b = [0u8; 2];
    vm::read_remote_into(pid, ip, &mut b).ok()?;
    (b == SYSCALL_INSN).then_some(ip)
}

/// The loaded size of the ELF image whose first page is `head` (the end of
/// its last PT_LOAD segment, for an image linked at 0 like the vDSO); None
/// if `head` is not an ELF64 header with its program headers in that page.
fn elf_image_len(head: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(head.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(head.get(o..o + 8)?.try_into().ok()?));
    if head.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    let mut end = 0;
    for i in 0..phnum as usize {
        let ph = phoff.checked_add(i.checked_mul(phentsize as usize)?)?;
        let kind = u32::from_le_bytes(head.get(ph..ph + 4)?.try_into().ok()?);
        if kind == 1 {
            // PT_LOAD: p_vaddr + p_memsz
            end = end.max(u64_at(ph + 0x10)?.checked_add(u64_at(ph + 0x28)?)?);
        }
    }
    (end > 0 && end <= 1 << 20).then_some(end)
}

/// `syscall` on x86_64.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

fn scratch_mmap_args() -> [u64; 6] {
    [
        0,
        SCRATCH_LEN,
        (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
        u64::MAX,
        0,
    ]
}

/// Where the batch table is for the batch loop at `code`: in the second half
/// of the scratch area whose first page holds the loop.
fn batch_table_at(code: u64) -> u64 {
    code - (code % 4096) + BATCH_TABLE
}

/// The batch table of `calls` (see `BATCH_CODE`).
fn batch_table(calls: &[Call]) -> Vec<u8> {
    let mut t = Vec::with_capacity(calls.len() * BATCH_ENTRY);
    for &(nr, a) in calls {
        t.extend_from_slice(&(nr as u64).to_ne_bytes());
        for x in a {
            t.extend_from_slice(&x.to_ne_bytes());
        }
        t.extend_from_slice(&0u64.to_ne_bytes());
    }
    t
}

/// The results in a batch table read back.
fn batch_results(t: &[u8]) -> Vec<i64> {
    t.chunks_exact(BATCH_ENTRY)
        .map(|e| i64::from_ne_bytes(e[56..64].try_into().unwrap()))
        .collect()
}

/// A raw result, or the error it stands for, naming the call.
fn check(tid: i32, what: &str, r: i64) -> Result<u64> {
    if (-4095..0).contains(&r) {
        return Err(Error::task(
            tid,
            format!("remote {what}"),
            std::io::Error::from_raw_os_error(-r as i32),
        ));
    }
    Ok(r as u64)
}

/// [`check`] of each result, `what[i]` naming call `i`.
pub fn check_all(tid: i32, res: &[i64], what: &[&str]) -> Result<Vec<u64>> {
    res.iter()
        .enumerate()
        .map(|(i, &r)| check(tid, what.get(i).copied().unwrap_or("syscall"), r))
        .collect()
}

impl Remote {
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
            self.clear_steps()?;
        }
        Ok(())
    }

    /// One call with syscall stops in every thread whose last call was a
    /// single step: none keeps the step's trap flag.
    fn clear_steps(&mut self) -> Result<()> {
        for (&tid, inj) in self.threads.iter_mut() {
            if inj.stepped() {
                inj.set_mode(StepMode::SyscallStops)
                    .task_ctx(tid, "switch to syscall stops")?;
                inj.syscall(libc::SYS_getpid, [0; 6])
                    .task_ctx(tid, "clear the trap flag")?;
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
        check(tid, what, r)
    }

    /// [`call`](Self::call) in two halves, so that other tasks' calls can
    /// run meanwhile: this one starts it in `tid`...
    pub fn begin_call(&mut self, tid: i32, what: &str, nr: i64, args: [u64; 6]) -> Result<()> {
        self.injector(tid)?
            .begin_syscall(nr, args)
            .task_ctx(tid, &format!("remote {what}"))
    }

    /// ... and this one waits for it and checks its result.
    pub fn end_call(&mut self, tid: i32, what: &str) -> Result<u64> {
        let r = self
            .injector(tid)?
            .end_syscall()
            .task_ctx(tid, &format!("remote {what}"))?;
        check(tid, what, r)
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
            scratch_mmap_args(),
        )?;
        self.scratch_mapped(a)
    }

    /// The scratch area is mapped at `a`: put the batch loop at its start
    /// (data goes after it).
    fn scratch_mapped(&mut self, a: u64) -> Result<u64> {
        self.scratch = Some(a);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_vdso_size_from_its_elf_header() {
        let me = std::process::id() as i32;
        let maps = crate::proc::read_maps(me).unwrap();
        let v = maps
            .iter()
            .find(|m| m.path.as_deref() == Some("[vdso]"))
            .unwrap();
        let base = crate::sys::misc::own_auxval(libc::AT_SYSINFO_EHDR);
        assert_eq!(base, v.start);
        let mut head = [0u8; 4096];
        vm::read_remote_into(me, base, &mut head).unwrap();
        let len = elf_image_len(&head).unwrap();
        // The mapping is whole pages: the image ends in its last one.
        assert!(len <= v.end - v.start && len > v.end - v.start - 4096);
        assert_eq!(
            vdso_syscall_ip(me, &crate::proc::read_auxv(me).unwrap())
                .map(|ip| ip >= v.start && ip < v.end),
            Some(true)
        );
        assert_eq!(elf_image_len(&[0u8; 64]), None);
    }
}
