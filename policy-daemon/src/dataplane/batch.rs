//! Whole batches of map operations in one `bpf()` call each: BPF_MAP_UPDATE_BATCH,
//! BPF_MAP_DELETE_BATCH and BPF_MAP_LOOKUP_BATCH, which aya 0.14 does not offer.
//!
//! A single-element update costs a syscall and, for arrays, more than the write itself;
//! a batch pays the syscall once. (An LPM trie insert is dominated by the trie walk in
//! the kernel, so there the gain is smaller.) Arrays and LPM tries implement the
//! kernel's generic batch operations; a kernel that refuses them (EINVAL from one that
//! predates the commands, ENOTSUPP/EOPNOTSUPP from a map type without them) is detected
//! once per map and operation, remembered, and served one element per call instead.
//!
//! The one `unsafe` function, [`bpf`], issues the syscall. Every caller goes through
//! [`BatchMap`], which checks buffer sizes against the key and value sizes the kernel
//! reported for the map, so the kernel never reads or writes past a buffer.

use std::{
    io,
    mem::{size_of, size_of_val},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    ptr,
};

use aya::{
    Pod,
    maps::{MapData, MapError, MapType},
};
use aya_obj::generated::{BPF_ANY, bpf_attr, bpf_cmd};

/// The kernel's ENOTSUPP (not in libc: it is kernel-internal, yet `bpf()` returns it).
const ENOTSUPP: i32 = 524;

/// A batch the kernel stopped part-way: the first `done` elements took effect, the
/// element at index `done` failed with `source`, and the rest were not attempted.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub source: io::Error,
}

/// Entries of a map as the kernel holds them: `count` keys of `key_size` bytes back to
/// back, and as many values of `value_size` bytes (for per-CPU maps: every possible
/// CPU's value, each rounded up to 8 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntries {
    pub key_size: usize,
    pub value_size: usize,
    pub count: usize,
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
}

impl RawEntries {
    pub fn new(key_size: usize, value_size: usize) -> Self {
        Self { key_size, value_size, count: 0, keys: Vec::new(), values: Vec::new() }
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
        self.count += 1;
    }

    pub fn key(&self, i: usize) -> &[u8] {
        &self.keys[i * self.key_size..(i + 1) * self.key_size]
    }

    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }
}

/// Whether a map takes one batch operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Support {
    Unknown,
    Yes,
    No,
}

/// One map's descriptor with the sizes the kernel holds for it, and what it is known
/// to support.
#[derive(Debug)]
pub struct BatchMap {
    name: &'static str,
    fd: OwnedFd,
    key_size: usize,
    /// For per-CPU maps: the value of every possible CPU, each rounded up to 8 bytes.
    value_size: usize,
    max_entries: u32,
    updates: Support,
    deletes: Support,
    lookups: Support,
}

/// Elements per BPF_MAP_LOOKUP_BATCH call when reading a map back.
const LOOKUP_CHUNK: usize = 4096;

impl BatchMap {
    /// A second descriptor of `map` (so this handle is independent of aya's), with its
    /// sizes as the kernel reports them.
    pub fn new(name: &'static str, map: &MapData, cpus: usize) -> Result<Self, MapError> {
        let info = map.info()?;
        let fd = map.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error })
        })?;
        let per_cpu = matches!(
            info.map_type()?,
            MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash
        );
        let value_size = info.value_size() as usize;
        let value_size = if per_cpu { value_size.next_multiple_of(8) * cpus } else { value_size };
        Ok(Self {
            name,
            fd,
            key_size: info.key_size() as usize,
            value_size,
            max_entries: info.max_entries(),
            updates: Support::Unknown,
            deletes: Support::Unknown,
            lookups: Support::Unknown,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// The map's entries as the kernel created it (aya's handles of pinned maps report
    /// the object's).
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// For per-CPU maps: every possible CPU's value, each rounded up to 8 bytes.
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    /// Sets `keys[i]` to `values[i]` for every `i`, in order. `values` holds one map
    /// value per key (for per-CPU maps: one per possible CPU, per key).
    pub fn update<K: Pod, V: Pod>(&mut self, keys: &[K], values: &[V]) -> Result<(), BatchError> {
        self.check::<K>(size_of_val(values) == keys.len() * self.value_size)?;
        let (keys_ptr, values_ptr) = (keys.as_ptr().cast::<u8>(), values.as_ptr().cast::<u8>());
        self.run(Op::Update, keys.len(), keys_ptr, values_ptr)
    }

    /// Deletes every key of `keys`, in order; a missing key is an error (ENOENT).
    pub fn delete<K: Pod>(&mut self, keys: &[K]) -> Result<(), BatchError> {
        self.check::<K>(true)?;
        let keys_ptr = keys.as_ptr().cast::<u8>();
        self.run(Op::Delete, keys.len(), keys_ptr, ptr::null())
    }

    /// One batch of `count` elements, or `count` single-element calls if the kernel
    /// does not offer the batch. `keys` and `values` (null for a delete) are buffers the
    /// callers checked against the map's key and value sizes.
    fn run(
        &mut self,
        op: Op,
        count: usize,
        keys: *const u8,
        values: *const u8,
    ) -> Result<(), BatchError> {
        if count == 0 {
            return Ok(());
        }
        let (batch_cmd, elem_cmd) = match op {
            Op::Update => (bpf_cmd::BPF_MAP_UPDATE_BATCH, bpf_cmd::BPF_MAP_UPDATE_ELEM),
            Op::Delete => (bpf_cmd::BPF_MAP_DELETE_BATCH, bpf_cmd::BPF_MAP_DELETE_ELEM),
            Op::Lookup => unreachable!("lookups go through `keys`"),
        };
        if *self.support(op) != Support::No {
            let Ok(count32) = u32::try_from(count) else {
                return Err(BatchError { done: 0, source: io::ErrorKind::InvalidInput.into() });
            };
            let mut attr = batch_attr(&self.fd, keys, values, count32);
            // SAFETY: the callers checked that the buffers hold `count` keys and values
            // of the map's sizes; for update and delete the kernel only reads them.
            let result = unsafe { sys_bpf(batch_cmd, &mut attr) };
            let done = batch_done(&attr, count);
            match self.settle(op, done, result) {
                Settled::Done(result) => return result,
                Settled::Unsupported => {}
            }
        }
        for i in 0..count {
            let key = keys.wrapping_add(i * self.key_size);
            let value =
                if values.is_null() { values } else { values.wrapping_add(i * self.value_size) };
            let mut attr = elem_attr(&self.fd, key, value);
            // SAFETY: element `i` of the checked buffers: one key and (for an update) one
            // value of the map's sizes.
            unsafe { sys_bpf(elem_cmd, &mut attr) }
                .map_err(|source| BatchError { done: i, source })?;
        }
        Ok(())
    }

    /// Calls `visit` with every entry of the map, read through BPF_MAP_LOOKUP_BATCH a
    /// chunk at a time; `None` if the kernel does not offer it for this map (read the
    /// entries one by one then).
    pub fn entries<K: Pod, V: Pod>(
        &mut self,
        visit: &mut dyn FnMut(&K, &V),
    ) -> Option<Result<(), BatchError>> {
        if let Err(e) = self.check::<K>(size_of::<V>() == self.value_size) {
            return Some(Err(e));
        }
        self.walk(&mut |key, value| {
            // SAFETY: `check` verified that the map's keys and values are the sizes of
            // `K` and `V`, and every bit pattern is a valid `Pod`.
            let (key, value) = unsafe {
                (
                    ptr::read_unaligned(key.as_ptr().cast::<K>()),
                    ptr::read_unaligned(value.as_ptr().cast::<V>()),
                )
            };
            visit(&key, &value);
        })
    }

    /// Every entry of the map as the kernel holds it (see [`RawEntries`]): through
    /// BPF_MAP_LOOKUP_BATCH, or BPF_MAP_GET_NEXT_KEY and a lookup per key where the
    /// kernel does not offer it.
    pub fn dump(&mut self) -> Result<RawEntries, BatchError> {
        let mut out = RawEntries::new(self.key_size, self.value_size);
        if let Some(result) = self.walk(&mut |key, value| out.push(key, value)) {
            return result.map(|()| out);
        }
        out = RawEntries::new(self.key_size, self.value_size);
        let mut key = vec![0u8; self.key_size];
        let mut value = vec![0u8; self.value_size];
        let mut first = true;
        loop {
            let mut attr = zeroed_attr();
            attr.__bindgen_anon_2.map_fd = self.fd.as_raw_fd() as u32;
            attr.__bindgen_anon_2.key = if first { 0 } else { key.as_ptr() as u64 };
            let mut next = vec![0u8; self.key_size];
            attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
            // SAFETY: `key` and `next` hold one key of the map's size each.
            match unsafe { sys_bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) } {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(source) => return Err(BatchError { done: out.count, source }),
            }
            first = false;
            key = next;
            let mut attr = elem_attr(&self.fd, key.as_ptr(), value.as_mut_ptr());
            attr.__bindgen_anon_2.flags = 0;
            // SAFETY: one key and room for one value of the map's sizes.
            match unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) } {
                Ok(()) => out.push(&key, &value),
                // Deleted since its key was read.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(BatchError { done: out.count, source }),
            }
        }
    }

    /// The value of `key` (of the map's key size) as the kernel holds it; `None` if the
    /// map has no such key.
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, io::Error> {
        if key.len() != self.key_size {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut value = vec![0u8; self.value_size];
        let mut attr = elem_attr(&self.fd, key.as_ptr(), value.as_mut_ptr());
        attr.__bindgen_anon_2.flags = 0;
        // SAFETY: one key of the map's key size and room for one value of its size.
        match unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) } {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `entries`, read by [`Self::dump`] from a map with the same key and value
    /// sizes.
    pub fn load(&mut self, entries: &RawEntries) -> Result<(), BatchError> {
        let fits = entries.key_size == self.key_size
            && entries.value_size == self.value_size
            && entries.keys.len() == entries.count * self.key_size
            && entries.values.len() == entries.count * self.value_size;
        if !fits {
            let message = format!(
                "entries of {}-byte keys and {}-byte values do not fit map `{}` (key {} \
                 bytes, value {} bytes)",
                entries.key_size, entries.value_size, self.name, self.key_size, self.value_size
            );
            let source = io::Error::new(io::ErrorKind::InvalidInput, message);
            return Err(BatchError { done: 0, source });
        }
        for start in (0..entries.count).step_by(LOOKUP_CHUNK) {
            let count = (entries.count - start).min(LOOKUP_CHUNK);
            let keys = entries.keys[start * self.key_size..].as_ptr();
            let values = entries.values[start * self.value_size..].as_ptr();
            self.run(Op::Update, count, keys, values)
                .map_err(|e| BatchError { done: start + e.done, source: e.source })?;
        }
        Ok(())
    }

    /// Calls `visit` with the bytes of every entry's key and value, read through
    /// BPF_MAP_LOOKUP_BATCH a chunk at a time; `None` if the kernel does not offer it
    /// for this map.
    fn walk(&mut self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Option<Result<(), BatchError>> {
        if self.lookups == Support::No {
            return None;
        }
        let (key_size, value_size) = (self.key_size, self.value_size);
        let mut keys = vec![0u8; LOOKUP_CHUNK * key_size];
        let mut values = vec![0u8; LOOKUP_CHUNK * value_size];
        // Where the previous call stopped (a key of the map), and where this one stops.
        let (mut cursor, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
        let mut first = true;
        loop {
            let mut attr =
                batch_attr(&self.fd, keys.as_mut_ptr(), values.as_mut_ptr(), LOOKUP_CHUNK as u32);
            attr.batch.in_batch = if first { 0 } else { cursor.as_ptr() as u64 };
            attr.batch.out_batch = next.as_mut_ptr() as u64;
            // SAFETY: `keys` and `values` have room for LOOKUP_CHUNK keys and values of
            // the map's sizes; `cursor` and `next` hold one key each.
            let result = unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
            // `batch_done` caps it at the capacity: the kernel wrote that many.
            let done = batch_done(&attr, LOOKUP_CHUNK);
            for i in 0..done {
                visit(
                    &keys[i * key_size..(i + 1) * key_size],
                    &values[i * value_size..(i + 1) * value_size],
                );
            }
            match result {
                Ok(()) => {}
                // The end of the map.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.lookups = Support::Yes;
                    return Some(Ok(()));
                }
                Err(e) => match self.settle(Op::Lookup, done, Err(e)) {
                    Settled::Unsupported => return None,
                    Settled::Done(result) => return Some(result),
                },
            }
            self.lookups = Support::Yes;
            std::mem::swap(&mut cursor, &mut next);
            first = false;
        }
    }

    /// `count` values of an array map from index `start`, through BPF_MAP_LOOKUP_BATCH
    /// (its cursor is the index before the first one wanted), or one element per call
    /// where the kernel does not offer it.
    pub fn range<V: Pod>(&mut self, start: u32, count: u32) -> Result<Vec<V>, BatchError> {
        self.check::<u32>(size_of::<V>() == self.value_size)?;
        let count = count as usize;
        let mut out: Vec<V> = Vec::with_capacity(count);
        let mut keys = vec![0u32; count.min(LOOKUP_CHUNK)];
        let mut next = 0u32;
        while self.lookups != Support::No && out.len() < count {
            let chunk = (count - out.len()).min(LOOKUP_CHUNK);
            let index = start + out.len() as u32;
            // The cursor is the last index already read: the kernel goes on after it.
            let cursor = index.wrapping_sub(1);
            let mut attr = batch_attr(
                &self.fd,
                keys.as_mut_ptr().cast::<u8>(),
                out.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
                chunk as u32,
            );
            attr.batch.in_batch = if index == 0 { 0 } else { ptr::from_ref(&cursor) as u64 };
            attr.batch.out_batch = ptr::from_mut(&mut next) as u64;
            // SAFETY: `keys` has room for `chunk` keys of 4 bytes (the map's key size,
            // checked) and `out` spare capacity for `chunk` values of the map's value
            // size; the cursors hold one key each.
            let result = unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) };
            let done = batch_done(&attr, chunk);
            // SAFETY: the kernel wrote `done` values after the ones already there.
            unsafe { out.set_len(out.len() + done) };
            match result {
                Ok(()) => self.lookups = Support::Yes,
                // The end of the map: fewer entries than asked for.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.lookups = Support::Yes;
                    return Err(BatchError { done: out.len(), source: e });
                }
                Err(e) => match self.settle(Op::Lookup, done, Err(e)) {
                    Settled::Unsupported => {}
                    Settled::Done(result) => {
                        result.map_err(|e| BatchError { done: out.len(), source: e.source })?;
                    }
                },
            }
        }
        while out.len() < count {
            let index = start + out.len() as u32;
            let mut attr = elem_attr(
                &self.fd,
                ptr::from_ref(&index).cast::<u8>(),
                out.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
            );
            // SAFETY: one key of 4 bytes and room for one value of the map's size.
            unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) }
                .map_err(|source| BatchError { done: out.len(), source })?;
            // SAFETY: the kernel wrote one more value.
            unsafe { out.set_len(out.len() + 1) };
        }
        Ok(out)
    }

    fn support(&mut self, op: Op) -> &mut Support {
        match op {
            Op::Update => &mut self.updates,
            Op::Delete => &mut self.deletes,
            Op::Lookup => &mut self.lookups,
        }
    }

    fn check<K>(&self, values_fit: bool) -> Result<(), BatchError> {
        if size_of::<K>() == self.key_size && values_fit {
            return Ok(());
        }
        let message = format!(
            "buffers do not fit map `{}` (key {} bytes, value {} bytes)",
            self.name, self.key_size, self.value_size
        );
        Err(BatchError { done: 0, source: io::Error::new(io::ErrorKind::InvalidInput, message) })
    }

    /// What a batch call's result means: done (well or not), or the kernel does not
    /// offer the operation for this map, which is remembered so that it is asked once.
    fn settle(&mut self, op: Op, done: usize, result: io::Result<()>) -> Settled {
        match result {
            Ok(()) => {
                *self.support(op) = Support::Yes;
                Settled::Done(Ok(()))
            }
            // EINVAL can also mean a bad first element: only if the kernel refuses an
            // empty batch too is the operation itself missing.
            Err(e) if *self.support(op) == Support::Unknown && done == 0 && refused(&e) => {
                if self.refuses_empty_batch(op) {
                    *self.support(op) = Support::No;
                    tracing::debug!(
                        map = self.name,
                        ?op,
                        "no batch operation: one element per call"
                    );
                    Settled::Unsupported
                } else {
                    Settled::Done(Err(BatchError { done, source: e }))
                }
            }
            Err(source) => Settled::Done(Err(BatchError { done, source })),
        }
    }

    fn refuses_empty_batch(&self, op: Op) -> bool {
        let cmd = match op {
            Op::Update => bpf_cmd::BPF_MAP_UPDATE_BATCH,
            Op::Delete => bpf_cmd::BPF_MAP_DELETE_BATCH,
            Op::Lookup => bpf_cmd::BPF_MAP_LOOKUP_BATCH,
        };
        let mut attr = batch_attr(&self.fd, ptr::null(), ptr::null(), 0);
        // SAFETY: a count of 0: the kernel reads and writes no element.
        let result = unsafe { sys_bpf(cmd, &mut attr) };
        matches!(result, Err(e) if refused(&e))
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Update,
    Delete,
    Lookup,
}

enum Settled {
    Done(Result<(), BatchError>),
    Unsupported,
}

/// The errors of a kernel without the operation.
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

/// A bpf_attr for a batch command on `fd`; the kernel writes back `batch.count`.
fn batch_attr(fd: &OwnedFd, keys: *const u8, values: *const u8, count: u32) -> bpf_attr {
    let mut attr = zeroed_attr();
    attr.batch.keys = keys as u64;
    attr.batch.values = values as u64;
    attr.batch.count = count;
    attr.batch.map_fd = fd.as_raw_fd() as u32;
    attr.batch.elem_flags = u64::from(BPF_ANY);
    attr
}

/// A bpf_attr for a single-element update (`value` set) or delete (`value` null).
fn elem_attr(fd: &OwnedFd, key: *const u8, value: *const u8) -> bpf_attr {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value as u64;
    attr.__bindgen_anon_2.flags = u64::from(BPF_ANY);
    attr
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of structs of integers: all zero is a valid value, and
    // the kernel requires the bytes a command does not use to be zero.
    unsafe { std::mem::zeroed() }
}

/// How many elements the kernel reports it processed (also when it stopped at an error).
fn batch_done(attr: &bpf_attr, count: usize) -> usize {
    // SAFETY: only the `batch` member was written, by `batch_attr` and the kernel.
    let done = unsafe { attr.batch.count } as usize;
    done.min(count)
}

/// The `bpf()` syscall.
///
/// # Safety
/// `attr` must be set up for `cmd`, and every pointer in it valid for what `cmd` does
/// with it: for the element and batch commands, the key, value and batch-cursor
/// pointers must hold (or, for lookups, have room for) as many keys and values as the
/// command names, of the key and value sizes the kernel holds for the map.
unsafe fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr that outlives the call; the buffers it points
    // to are valid as the caller guarantees.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
