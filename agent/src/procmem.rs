//! Reading another process's memory with `process_vm_readv`.
//!
//! The target keeps running while we read, so every value may be torn or
//! stale: callers validate what they get and never follow a pointer blindly.

use std::io;

/// Reads `buf.len()` bytes at `address` in process `pid`.
pub fn read(pid: u32, address: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` covers exactly `buf`; the kernel checks `remote`.
    let n = unsafe {
        libc::process_vm_readv(
            pid as libc::pid_t,
            &raw const local,
            1,
            &raw const remote,
            1,
            0,
        )
    };
    match usize::try_from(n) {
        Err(_) => Err(io::Error::last_os_error()),
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read: {n} of {} bytes", buf.len()),
        )),
    }
}

/// Reads a little-endian `u64` at `address`.
pub fn read_u64(pid: u32, address: u64) -> io::Result<u64> {
    let mut b = [0u8; 8];
    read(pid, address, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Reads many equally sized records at the given addresses, in batches of
/// iovecs (one syscall per batch). A record that cannot be read is `None`.
pub fn read_many(pid: u32, addresses: &[u64], record: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(addresses.len());
    read_each(pid, addresses, record, |_, bytes| {
        out.push(bytes.map(<[u8]>::to_vec));
    });
    out
}

/// Like [`read_many`], but hands each record to `f` (with its index) from a
/// reused batch buffer: a scan of a million goroutines then holds one batch
/// of records, not a million small allocations.
pub fn read_each(
    pid: u32,
    addresses: &[u64],
    record: usize,
    mut f: impl FnMut(usize, Option<&[u8]>),
) {
    // IOV_MAX is 1024 on Linux.
    const BATCH: usize = 1024;
    let mut buf = vec![0u8; BATCH.min(addresses.len()) * record];
    let mut single = vec![0u8; record];
    let mut local = Vec::with_capacity(BATCH);
    let mut remote = Vec::with_capacity(BATCH);
    for (c, chunk) in addresses.chunks(BATCH).enumerate() {
        let buf = &mut buf[..chunk.len() * record];
        local.clear();
        local.extend(buf.chunks_mut(record).map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: record,
        }));
        remote.clear();
        remote.extend(chunk.iter().map(|&a| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: record,
        }));
        // SAFETY: each local iovec covers one disjoint `record`-sized piece of `buf`.
        let n = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        // process_vm_readv stops at the first remote iovec that faults; the
        // records after it are retried one by one.
        let whole = usize::try_from(n).unwrap_or(0) / record;
        for (i, piece) in buf.chunks(record).enumerate() {
            let index = c * BATCH + i;
            if i < whole {
                f(index, Some(piece));
            } else {
                let ok = read(pid, chunk[i], &mut single).is_ok();
                f(index, ok.then_some(&single[..]));
            }
        }
    }
}
