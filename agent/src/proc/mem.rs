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
    let mut ranges = Vec::with_capacity(MAX_IOV.min(addresses.len()));
    for (c, chunk) in addresses.chunks(MAX_IOV).enumerate() {
        ranges.clear();
        ranges.extend(chunk.iter().map(|&a| (a, record)));
        read_ranges(pid, &ranges, |i, bytes| f(c * MAX_IOV + i, bytes));
    }
}

/// Like [`read_each`] (but in address order), for records that mostly lie
/// close together, as the runtime's g structures do: records at most
/// `NEAR` bytes apart are read as one range. Pinning the target's pages
/// costs per range, so a million records cost a tenth of the page walks.
pub fn read_each_near(
    pid: u32,
    addresses: &[u64],
    record: usize,
    mut f: impl FnMut(usize, Option<&[u8]>),
) {
    /// The most bytes between two records read through rather than skipped.
    const NEAR: u64 = 512;
    /// The longest range.
    const MAX_RUN: u64 = 64 << 10;
    let mut order: Vec<usize> = (0..addresses.len()).collect();
    order.sort_unstable_by_key(|&i| addresses[i]);
    // Ranges of one batch, and the slice of `order` each range covers.
    let mut runs: Vec<(u64, usize)> = Vec::with_capacity(MAX_IOV);
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(MAX_IOV);
    let mut k = 0;
    while k < order.len() {
        let start = addresses[order[k]];
        let lo = k;
        k += 1;
        // A pointer at the top of the address space is read alone (and fails).
        let mut end = start.saturating_add(record as u64);
        while let Some(&next) = order.get(k) {
            let a = addresses[next];
            match a.checked_add(record as u64) {
                Some(e) if a.saturating_sub(end) <= NEAR && e - start <= MAX_RUN => {
                    end = end.max(e);
                    k += 1;
                }
                _ => break,
            }
        }
        runs.push((start, (end - start) as usize));
        spans.push((lo, k));
        if runs.len() == MAX_IOV || k == order.len() {
            read_runs(pid, addresses, &order, record, &runs, &spans, &mut f);
            runs.clear();
            spans.clear();
        }
    }
}

/// Reads the ranges `runs` and hands `f` each record in them; `spans[r]`
/// is the slice of `order` (record indices) that range `r` covers.
fn read_runs(
    pid: u32,
    addresses: &[u64],
    order: &[usize],
    record: usize,
    runs: &[(u64, usize)],
    spans: &[(usize, usize)],
    f: &mut impl FnMut(usize, Option<&[u8]>),
) {
    read_ranges(pid, runs, |r, bytes| {
        let (start, (lo, hi)) = (runs[r].0, spans[r]);
        for &i in &order[lo..hi] {
            let at = (addresses[i] - start) as usize;
            match bytes.and_then(|b| b.get(at..at + record)) {
                Some(b) => f(i, Some(b)),
                // One unreadable record spoils its range: the others are
                // read one by one.
                None => read_ranges(pid, &[(addresses[i], record)], |_, b| f(i, b)),
            }
        }
    });
}

/// `IOV_MAX` on Linux: the most iovecs one `process_vm_readv` takes.
const MAX_IOV: usize = 1024;

/// Reads each `(address, length)` range, in batches of at most [`MAX_IOV`]
/// ranges and about 1 MiB (one syscall each), handing `f` each range's
/// index and bytes from a reused buffer, or `None` if it cannot be read.
pub fn read_ranges(pid: u32, ranges: &[(u64, usize)], mut f: impl FnMut(usize, Option<&[u8]>)) {
    const BATCH_BYTES: usize = 1 << 20;
    let mut buf = Vec::new();
    let mut single = Vec::new();
    let mut local = Vec::with_capacity(MAX_IOV.min(ranges.len()));
    let mut remote = Vec::with_capacity(MAX_IOV.min(ranges.len()));
    let mut first = 0;
    while first < ranges.len() {
        let mut end = first;
        let mut bytes = 0;
        while end < ranges.len()
            && end - first < MAX_IOV
            && (end == first || bytes + ranges[end].1 <= BATCH_BYTES)
        {
            bytes += ranges[end].1;
            end += 1;
        }
        let batch = &ranges[first..end];
        buf.resize(bytes, 0);
        local.clear();
        remote.clear();
        let mut rest = &mut buf[..];
        for &(address, len) in batch {
            let (piece, tail) = rest.split_at_mut(len);
            local.push(libc::iovec {
                iov_base: piece.as_mut_ptr().cast(),
                iov_len: len,
            });
            remote.push(libc::iovec {
                iov_base: address as *mut libc::c_void,
                iov_len: len,
            });
            rest = tail;
        }
        // SAFETY: each local iovec covers one disjoint piece of `buf`.
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
        // process_vm_readv stops at the first remote range that faults;
        // the ranges from there on are retried one by one.
        let mut copied = usize::try_from(n).unwrap_or(0);
        let mut at = 0;
        for (k, &(address, len)) in batch.iter().enumerate() {
            if copied >= len {
                f(first + k, Some(&buf[at..at + len]));
                copied -= len;
            } else {
                copied = 0;
                single.resize(len, 0);
                let ok = read(pid, address, &mut single).is_ok();
                f(first + k, ok.then_some(&single[..]));
            }
            at += len;
        }
        first = end;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Records close together, far apart, duplicated, unmapped and at the
    /// top of the address space, in shuffled order: each index gets its own
    /// bytes or `None`, exactly once.
    #[test]
    fn near_records_are_read_as_ranges_and_each_gets_its_bytes() {
        const RECORD: usize = 40;
        let near: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let far: Vec<u8> = (0..4096).map(|i| (i % 13) as u8).collect();
        let base = near.as_ptr() as u64;
        let mut addresses: Vec<u64> = (0..1500).map(|i| base + i * 43 % 60_000).collect();
        addresses.push(far.as_ptr() as u64 + 100);
        addresses.push(base + 5); // a duplicate region
        addresses.push(base + 5);
        addresses.push(8); // unmapped
        addresses.push(u64::MAX - 10); // would overflow
        addresses.reverse();
        let mut got: HashMap<usize, Option<Vec<u8>>> = HashMap::new();
        read_each_near(std::process::id(), &addresses, RECORD, |i, b| {
            assert!(
                got.insert(i, b.map(<[u8]>::to_vec)).is_none(),
                "index {i} twice"
            );
        });
        assert_eq!(got.len(), addresses.len());
        for (i, &a) in addresses.iter().enumerate() {
            let want = [&near, &far].into_iter().find_map(|v| {
                let off = usize::try_from(a.checked_sub(v.as_ptr() as u64)?).ok()?;
                v.get(off..off + RECORD).map(<[u8]>::to_vec)
            });
            assert_eq!(got[&i], want, "record {i} at {a:#x}");
        }
    }
}
