//! `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (kernel 5.6):
//! aya 0.14 has no batch operations, and a million trie entries read or written one syscall
//! each take seconds. The kernel's
//! generic batch loop writes each element as `BPF_MAP_UPDATE_ELEM` would, in order, so the
//! diff's order (new and changed entries first, stale ones last) holds.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Elements per call: bounds the time the kernel spends in one syscall.
const CHUNK: usize = 1 << 16;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` for every `i`. On an error, the entries before the one that
/// failed are written; the error says which one failed.
pub fn update<K, V>(fd: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (start, (keys, values)) in keys
        .chunks(CHUNK)
        .zip(values.chunks(CHUNK))
        .enumerate()
        .map(|(i, chunk)| (i * CHUNK, chunk))
    {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            ..BatchAttr::default()
        };
        call(BPF_MAP_UPDATE_BATCH, fd, keys.len(), &mut attr).map_err(|(done, error)| {
            io::Error::new(error.kind(), format!("entry {}: {error}", start + done))
        })?;
    }
    Ok(())
}

/// Removes every key of `keys`; as [`update`] on an error.
pub fn delete<K>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    for (start, keys) in keys
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| (i * CHUNK, chunk))
    {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            ..BatchAttr::default()
        };
        call(BPF_MAP_DELETE_BATCH, fd, keys.len(), &mut attr).map_err(|(done, error)| {
            io::Error::new(error.kind(), format!("entry {}: {error}", start + done))
        })?;
    }
    Ok(())
}

/// Every entry of the map, read in chunks (the kernel walks the map as `get_next_key` does).
/// `zero_key` and `zero_value` fill the buffers before the kernel writes them.
pub fn lookup<K: Copy, V: Copy>(
    fd: BorrowedFd<'_>,
    zero_key: K,
    zero_value: V,
) -> io::Result<Vec<(K, V)>> {
    const READ: usize = 4096;
    let mut entries = Vec::new();
    let mut keys = vec![zero_key; READ];
    let mut values = vec![zero_value; READ];
    let mut after = None;
    loop {
        let (filled, next) = lookup_after(fd, after, &mut keys, &mut values)?;
        entries.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        match next {
            Some(next) => after = Some(next),
            None => return Ok(entries),
        }
    }
}

/// Up to `keys.len()` entries of the map in the kernel's walk order, from the one after
/// `after` (from the first with `None`), into `keys` and `values`: how many were read, and the
/// key to read on from (`None` at the end of the map). A walk resumed after a key the map no
/// longer holds starts again from the first entry (`get_next_key`'s rule for a missing key).
pub fn lookup_after<K: Copy, V: Copy>(
    fd: BorrowedFd<'_>,
    after: Option<K>,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, Option<K>)> {
    let max = keys.len().min(values.len());
    let Some(mut out_batch) = keys.first().copied() else {
        return Ok((0, None));
    };
    // The kernel's position between calls: a key (the generic batch uses the next key).
    let in_batch = after;
    let mut attr = BatchAttr {
        in_batch: in_batch
            .as_ref()
            .map_or(0, |key| std::ptr::from_ref(key) as u64),
        out_batch: std::ptr::from_mut(&mut out_batch) as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        ..BatchAttr::default()
    };
    let end = match call(BPF_MAP_LOOKUP_BATCH, fd, max, &mut attr) {
        Ok(()) => false,
        // The end of the map: the last entries come with it.
        Err((_, error)) if error.raw_os_error() == Some(libc::ENOENT) => true,
        Err((_, error)) => return Err(error),
    };
    let filled = (attr.count as usize).min(max);
    if end || filled == 0 {
        return Ok((filled, None));
    }
    // The kernel wrote the last key it read to `out_batch`.
    Ok((filled, Some(out_batch)))
}

/// Whether an error means the kernel has no batch operations for this map (then the caller
/// writes element by element).
#[must_use]
pub fn unsupported(error: &io::Error) -> bool {
    // ENOTSUPP (524, kernel-internal) and EOPNOTSUPP/EINVAL from older kernels.
    matches!(
        error.raw_os_error(),
        Some(524 | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// One batch syscall over `count` elements; on an error, how many were done.
fn call(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    count: usize,
    attr: &mut BatchAttr,
) -> Result<(), (usize, io::Error)> {
    attr.map_fd = u32::try_from(fd.as_raw_fd()).map_err(|_| (0, io::Error::other("bad fd")))?;
    attr.count = u32::try_from(count).map_err(|_| (0, io::Error::other("chunk too big")))?;
    // SAFETY: `attr` is a valid `bpf_attr` prefix of its own size; `keys` and `values` point
    // at `count` elements of the map's key and value sizes, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        let error = io::Error::last_os_error();
        return Err((attr.count as usize, error));
    }
    Ok(())
}
