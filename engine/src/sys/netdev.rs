//! Network device flags by ioctl, for bringing loopback up in a fresh
//! network namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

const SIOCGIFFLAGS: u64 = 0x8913;
const SIOCSIFFLAGS: u64 = 0x8914;

/// `struct ifreq`: 16-byte name, then a union whose first member we use
/// is `short ifr_flags`.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    if name.len() >= 16 {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let mut r = IfReq {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers; the fd is owned right away.
    let fd = cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface flags (IFF_*) of device `name` in the caller's net ns.
pub fn get_flags(name: &str) -> io::Result<u32> {
    let s = ctl_socket()?;
    let mut r = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS writes into the ifreq we pass, which is as large
    // as the kernel's struct ifreq (40 bytes).
    cvt(
        unsafe { libc::ioctl(s.as_raw_fd(), SIOCGIFFLAGS as _, &mut r as *mut IfReq) }
            as libc::c_long,
    )?;
    Ok(r.flags as u16 as u32)
}

/// Set the interface flags of device `name` (e.g. IFF_UP).
pub fn set_flags(name: &str, flags: u32) -> io::Result<()> {
    let s = ctl_socket()?;
    let mut r = ifreq(name)?;
    r.flags = flags as u16 as i16;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass (40 bytes, as the kernel's).
    cvt(
        unsafe { libc::ioctl(s.as_raw_fd(), SIOCSIFFLAGS as _, &mut r as *mut IfReq) }
            as libc::c_long,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }

    #[test]
    fn loopback_flags() {
        // Loopback exists in every net ns; reading its flags needs no root.
        let f = super::get_flags("lo").unwrap();
        assert_ne!(f & libc::IFF_LOOPBACK as u32, 0);
    }
}
