//! SysV IPC syscalls (shm, sem, msg) for dumping and recreating the objects
//! of an IPC namespace. Kernel structures are handled as raw x86_64 buffers
//! (`ipc64_perm`, `shmid64_ds`, `semid64_ds`, `msqid64_ds`) read and written
//! at fixed offsets, so no libc struct layout is assumed.

use std::io;

use super::cvt;

const IPC_RMID: i64 = 0;
const IPC_SET: i64 = 1;
const IPC_STAT: i64 = 2;
const GETALL: i64 = 13;
const SETALL: i64 = 17;
/// msgrcv: copy message number `msgtyp` without removing it.
pub const MSG_COPY: i64 = 0o40000;
const IPC_NOWAIT: i64 = 0o4000;
const SHM_RDONLY: i64 = 0o10000;

/// Size of every `*64_ds` buffer we hand the kernel (all are smaller).
const DS_LEN: usize = 128;

/// The `ipc64_perm` part of every object (offset 0 of each `*64_ds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perm {
    pub key: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    pub mode: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().unwrap())
}

fn perm_of(b: &[u8]) -> Perm {
    Perm {
        key: u32_at(b, 0) as i32,
        uid: u32_at(b, 4),
        gid: u32_at(b, 8),
        cuid: u32_at(b, 12),
        cgid: u32_at(b, 16),
        mode: u32_at(b, 20),
    }
}

/// Only uid, gid and the low 9 mode bits are taken by IPC_SET.
fn put_perm(b: &mut [u8], p: &Perm) {
    b[4..8].copy_from_slice(&p.uid.to_ne_bytes());
    b[8..12].copy_from_slice(&p.gid.to_ne_bytes());
    b[20..24].copy_from_slice(&(p.mode & 0o777).to_ne_bytes());
}

fn sys(nr: i64, a: [u64; 5]) -> io::Result<i64> {
    // SAFETY: the SysV IPC syscalls only read/write the user buffers whose
    // addresses callers pass in `a`, each at least as large as the kernel
    // structure (DS_LEN) or the stated length.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) };
    cvt(r)
}

// ---- shared memory ----

#[derive(Debug, Clone, Copy)]
pub struct ShmStat {
    pub perm: Perm,
    pub size: u64,
}

pub fn shmget(key: i32, size: u64, flags: i32) -> io::Result<i32> {
    sys(
        libc::SYS_shmget,
        [key as u32 as u64, size, flags as u64, 0, 0],
    )
    .map(|r| r as i32)
}

pub fn shm_stat(id: i32) -> io::Result<ShmStat> {
    let mut b = [0u8; DS_LEN];
    sys(
        libc::SYS_shmctl,
        [id as u64, IPC_STAT as u64, b.as_mut_ptr() as u64, 0, 0],
    )?;
    Ok(ShmStat {
        perm: perm_of(&b),
        size: u64_at(&b, 48),
    })
}

pub fn shm_set(id: i32, p: &Perm) -> io::Result<()> {
    let mut b = [0u8; DS_LEN];
    sys(
        libc::SYS_shmctl,
        [id as u64, IPC_STAT as u64, b.as_mut_ptr() as u64, 0, 0],
    )?;
    put_perm(&mut b, p);
    sys(
        libc::SYS_shmctl,
        [id as u64, IPC_SET as u64, b.as_mut_ptr() as u64, 0, 0],
    )
    .map(drop)
}

pub fn shm_rmid(id: i32) -> io::Result<()> {
    sys(libc::SYS_shmctl, [id as u64, IPC_RMID as u64, 0, 0, 0]).map(drop)
}

/// Attach segment `id` (read-only unless `write`), run `f` over its bytes,
/// detach.
fn with_shm<T>(id: i32, len: usize, write: bool, f: impl FnOnce(&mut [u8]) -> T) -> io::Result<T> {
    let flags = if write { 0 } else { SHM_RDONLY };
    let addr = sys(libc::SYS_shmat, [id as u64, 0, flags as u64, 0, 0])? as usize;
    // Callers pass the segment size as `len`, and write=false only to read.
    // SAFETY: shmat mapped >= `len` bytes at `addr`, ours alone until shmdt.
    let slice = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
    let out = f(slice);
    sys(libc::SYS_shmdt, [addr as u64, 0, 0, 0, 0])?;
    Ok(out)
}

/// The contents of segment `id` (`len` = its size).
pub fn shm_read(id: i32, len: usize) -> io::Result<Vec<u8>> {
    with_shm(id, len, false, |s| s.to_vec())
}

/// Fill segment `id` with `data` (at most its size).
pub fn shm_write(id: i32, data: &[u8]) -> io::Result<()> {
    with_shm(id, data.len(), true, |s| s.copy_from_slice(data))
}

// ---- semaphores ----

#[derive(Debug, Clone, Copy)]
pub struct SemStat {
    pub perm: Perm,
    pub nsems: u32,
}

pub fn semget(key: i32, nsems: i32, flags: i32) -> io::Result<i32> {
    sys(
        libc::SYS_semget,
        [key as u32 as u64, nsems as u64, flags as u64, 0, 0],
    )
    .map(|r| r as i32)
}

pub fn sem_stat(id: i32) -> io::Result<SemStat> {
    let mut b = [0u8; DS_LEN];
    sys(
        libc::SYS_semctl,
        [id as u64, 0, IPC_STAT as u64, b.as_mut_ptr() as u64, 0],
    )?;
    Ok(SemStat {
        perm: perm_of(&b),
        nsems: u64_at(&b, 80) as u32,
    })
}

pub fn sem_set(id: i32, p: &Perm) -> io::Result<()> {
    let mut b = [0u8; DS_LEN];
    sys(
        libc::SYS_semctl,
        [id as u64, 0, IPC_STAT as u64, b.as_mut_ptr() as u64, 0],
    )?;
    put_perm(&mut b, p);
    sys(
        libc::SYS_semctl,
        [id as u64, 0, IPC_SET as u64, b.as_mut_ptr() as u64, 0],
    )
    .map(drop)
}

pub fn sem_getall(id: i32, nsems: u32) -> io::Result<Vec<u16>> {
    let mut v = vec![0u16; nsems as usize];
    sys(
        libc::SYS_semctl,
        [id as u64, 0, GETALL as u64, v.as_mut_ptr() as u64, 0],
    )?;
    Ok(v)
}

pub fn sem_setall(id: i32, vals: &[u16]) -> io::Result<()> {
    let mut v = vals.to_vec();
    sys(
        libc::SYS_semctl,
        [id as u64, 0, SETALL as u64, v.as_mut_ptr() as u64, 0],
    )
    .map(drop)
}

// ---- message queues ----

#[derive(Debug, Clone, Copy)]
pub struct MsgStat {
    pub perm: Perm,
    pub qnum: u64,
    pub qbytes: u64,
}

pub fn msgget(key: i32, flags: i32) -> io::Result<i32> {
    sys(libc::SYS_msgget, [key as u32 as u64, flags as u64, 0, 0, 0]).map(|r| r as i32)
}

pub fn msg_stat(id: i32) -> io::Result<MsgStat> {
    let mut b = [0u8; DS_LEN];
    sys(
        libc::SYS_msgctl,
        [id as u64, IPC_STAT as u64, b.as_mut_ptr() as u64, 0, 0],
    )?;
    Ok(MsgStat {
        perm: perm_of(&b),
        qnum: u64_at(&b, 80),
        qbytes: u64_at(&b, 88),
    })
}

pub fn msg_set(id: i32, p: &Perm, qbytes: u64) -> io::Result<()> {
    let mut b = [0u8; DS_LEN];
    sys(
        libc::SYS_msgctl,
        [id as u64, IPC_STAT as u64, b.as_mut_ptr() as u64, 0, 0],
    )?;
    put_perm(&mut b, p);
    b[88..96].copy_from_slice(&qbytes.to_ne_bytes());
    sys(
        libc::SYS_msgctl,
        [id as u64, IPC_SET as u64, b.as_mut_ptr() as u64, 0, 0],
    )
    .map(drop)
}

/// Copy message number `index` of queue `id` without dequeuing it
/// (MSG_COPY); `None` past the last message. `max` bounds the text size.
pub fn msg_copy(id: i32, index: u64, max: usize) -> io::Result<Option<(i64, Vec<u8>)>> {
    let mut b = vec![0u8; 8 + max];
    match sys(
        libc::SYS_msgrcv,
        [
            id as u64,
            b.as_mut_ptr() as u64,
            max as u64,
            index,
            (MSG_COPY | IPC_NOWAIT) as u64,
        ],
    ) {
        Ok(n) => {
            let mtype = i64::from_ne_bytes(b[..8].try_into().unwrap());
            Ok(Some((mtype, b[8..8 + n as usize].to_vec())))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn msgsnd(id: i32, mtype: i64, text: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(8 + text.len());
    b.extend_from_slice(&mtype.to_ne_bytes());
    b.extend_from_slice(text);
    sys(
        libc::SYS_msgsnd,
        [
            id as u64,
            b.as_ptr() as u64,
            text.len() as u64,
            IPC_NOWAIT as u64,
            0,
        ],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_objects_round_trip() {
        // IPC_PRIVATE objects need no namespace and no root.
        let id = shmget(0, 4096, 0o600 | libc::IPC_CREAT).unwrap();
        shm_write(id, b"hello").unwrap();
        let st = shm_stat(id).unwrap();
        assert_eq!(st.size, 4096);
        assert_eq!(st.perm.mode & 0o777, 0o600);
        assert_eq!(&shm_read(id, 5).unwrap(), b"hello");
        shm_rmid(id).unwrap();

        let s = semget(0, 3, 0o600 | libc::IPC_CREAT).unwrap();
        sem_setall(s, &[5, 6, 7]).unwrap();
        assert_eq!(sem_stat(s).unwrap().nsems, 3);
        assert_eq!(sem_getall(s, 3).unwrap(), vec![5, 6, 7]);
        sys(libc::SYS_semctl, [s as u64, 0, IPC_RMID as u64, 0, 0]).unwrap();

        let q = msgget(0, 0o600 | libc::IPC_CREAT).unwrap();
        msgsnd(q, 3, b"abc").unwrap();
        msgsnd(q, 9, b"").unwrap();
        let st = msg_stat(q).unwrap();
        assert_eq!(st.qnum, 2);
        match msg_copy(q, 0, 8192) {
            Ok(m) => {
                assert_eq!(m, Some((3, b"abc".to_vec())));
                assert_eq!(msg_copy(q, 1, 8192).unwrap(), Some((9, vec![])));
                assert_eq!(msg_copy(q, 2, 8192).unwrap(), None);
                assert_eq!(msg_stat(q).unwrap().qnum, 2);
            }
            // Kernels without CONFIG_CHECKPOINT_RESTORE.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSYS)),
        }
        sys(libc::SYS_msgctl, [q as u64, IPC_RMID as u64, 0, 0, 0]).unwrap();
    }
}
