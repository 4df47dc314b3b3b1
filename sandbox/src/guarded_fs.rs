//! `wasi:filesystem/types` as the node serves it: wasmtime-wasi's implementation, with two
//! guards in front of it.
//!
//! - **A per-call disk quota.** Bytes written into read-write grants (every write, through
//!   `write` or an output stream, counts; growing a file with `set-size` counts the growth) and
//!   entries created there (files, directories, links) are counted against the call's
//!   `limits.disk_write` and `limits.files_created`. Past either, the operation fails with
//!   `quota` (`insufficient-space` on a stream) and nothing is written; the guest can go on.
//! - **Only files and directories are opened.** Opening a FIFO, a device or a socket found in a
//!   grant would block a host thread (an open or a read that never returns) past the call's end,
//!   so such entries are refused with `access` before anything opens them.
//!
//! Every other function is passed through unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use wasmtime::component::Resource;
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DescriptorType, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError,
    StreamResult,
};

/// What one call may still write and create in its read-write grants.
#[derive(Debug)]
pub(crate) struct DiskQuota {
    bytes_left: AtomicU64,
    entries_left: AtomicU64,
    bytes_limit: u64,
    entries_limit: u64,
    reached: AtomicBool,
}

impl DiskQuota {
    /// A quota of `bytes` written and `entries` created.
    pub(crate) fn new(bytes: u64, entries: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes_left: AtomicU64::new(bytes),
            entries_left: AtomicU64::new(entries),
            bytes_limit: bytes,
            entries_limit: entries,
            reached: AtomicBool::new(false),
        })
    }

    /// Takes `n` bytes from the quota, or none when fewer are left.
    fn take_bytes(&self, n: u64) -> bool {
        let taken = self
            .bytes_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .is_ok();
        if !taken {
            self.reached.store(true, Ordering::Relaxed);
        }
        taken
    }

    /// Whether one more entry may be created (taken by [`Self::take_entry`] once it is).
    fn entry_allowed(&self) -> bool {
        let allowed = self.entries_left.load(Ordering::Acquire) > 0;
        if !allowed {
            self.reached.store(true, Ordering::Relaxed);
        }
        allowed
    }

    fn take_entry(&self) {
        let _ = self
            .entries_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(1)
            });
    }

    /// Bytes written so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_limit - self.bytes_left.load(Ordering::Acquire)
    }

    /// Entries created so far.
    pub(crate) fn entries_created(&self) -> u64 {
        self.entries_limit - self.entries_left.load(Ordering::Acquire)
    }

    /// Whether an operation was refused for the quota; `None` when none was.
    pub(crate) fn reached(&self) -> Option<String> {
        self.reached.load(Ordering::Relaxed).then(|| {
            format!(
                "disk quota reached: {} of {} bytes written (limits.disk_write), {} of {} \
                 entries created (limits.files_created); later writes failed with `quota`",
                self.bytes_written(),
                self.bytes_limit,
                self.entries_created(),
                self.entries_limit
            )
        })
    }
}

/// Marks the linker type for [`add_to_linker`]'s getter.
pub(crate) struct GuardedFs;

impl wasmtime::component::HasData for GuardedFs {
    type Data<'a> = GuardedFsView<'a>;
}

/// wasmtime-wasi's filesystem view and the call's quota.
pub(crate) struct GuardedFsView<'a> {
    pub(crate) inner: WasiFilesystemCtxView<'a>,
    pub(crate) quota: &'a Arc<DiskQuota>,
}

/// A borrow of `fd` to hand to a second inner call.
fn again<T: 'static>(fd: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(fd.rep())
}

fn quota_error() -> FsError {
    ErrorCode::Quota.into()
}

/// Whether an entry of this type may be opened: only ones that cannot block a host thread.
fn openable(kind: DescriptorType) -> bool {
    matches!(
        kind,
        DescriptorType::RegularFile | DescriptorType::Directory | DescriptorType::SymbolicLink
    )
}

fn is_no_entry(err: &FsError) -> bool {
    matches!(err.downcast_ref(), Some(ErrorCode::NoEntry))
}

impl types::Host for GuardedFsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDescriptor for GuardedFsView<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.inner.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        self.inner.sync_data(fd).await
    }

    async fn get_flags(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorFlags> {
        self.inner.get_flags(fd).await
    }

    async fn get_type(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorType> {
        self.inner.get_type(fd).await
    }

    async fn set_size(
        &mut self,
        fd: Resource<types::Descriptor>,
        size: types::Filesize,
    ) -> FsResult<()> {
        let current = self.inner.stat(again(&fd)).await?.size;
        if size > current && !self.quota.take_bytes(size - current) {
            return Err(quota_error());
        }
        self.inner.set_size(fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.inner.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if !self.quota.take_bytes(len) {
            return Err(quota_error());
        }
        self.inner.write(fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.inner.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        self.inner.sync(fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        if !self.quota.entry_allowed() {
            return Err(quota_error());
        }
        self.inner.create_directory_at(fd, path).await?;
        self.quota.take_entry();
        Ok(())
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorStat> {
        self.inner.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.inner.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner
            .set_times_at(fd, path_flags, path, atim, mtim)
            .await
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        if !self.quota.entry_allowed() {
            return Err(quota_error());
        }
        self.inner
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await?;
        self.quota.take_entry();
        Ok(())
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        // Look before opening: a FIFO or a device would block the opening thread.
        let creates = match self
            .inner
            .stat_at(again(&fd), path_flags, path.clone())
            .await
        {
            Ok(stat) if !openable(stat.type_) => return Err(ErrorCode::Access.into()),
            Ok(_) => false,
            Err(err) if is_no_entry(&err) => oflags.contains(types::OpenFlags::CREATE),
            Err(err) => return Err(err),
        };
        if creates && !self.quota.entry_allowed() {
            return Err(quota_error());
        }
        let opened = self
            .inner
            .open_at(fd, path_flags, path, oflags, flags)
            .await?;
        if creates {
            self.quota.take_entry();
        }
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        self.inner.readlink_at(fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.inner.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.inner.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        if !self.quota.entry_allowed() {
            return Err(quota_error());
        }
        self.inner.symlink_at(fd, src_path, dest_path).await?;
        self.quota.take_entry();
        Ok(())
    }

    async fn unlink_file_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.inner.unlink_file_at(fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.inner.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let stream = self.inner.write_via_stream(fd, offset)?;
        self.metered(stream)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let stream = self.inner.append_via_stream(fd)?;
        self.metered(stream)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash_at(fd, path_flags, path).await
    }
}

impl GuardedFsView<'_> {
    /// Replaces a file output stream in the table with one that counts against the quota.
    fn metered(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.inner.table.delete(stream)?;
        let metered: DynOutputStream = Box::new(MeteredStream {
            inner,
            quota: self.quota.clone(),
        });
        Ok(self.inner.table.push(metered)?)
    }
}

impl HostDirectoryEntryStream for GuardedFsView<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.inner.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

/// A file output stream whose writes count against the call's quota.
struct MeteredStream {
    inner: DynOutputStream,
    quota: Arc<DiskQuota>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for MeteredStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for MeteredStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if !self.quota.take_bytes(len) {
            // Mapped to `insufficient-space` by `filesystem-error-code`.
            return Err(StreamError::LastOperationFailed(wasmtime::Error::new(
                std::io::Error::from_raw_os_error(ENOSPC),
            )));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}

/// `ENOSPC` ("no space left on device") on Linux and macOS.
const ENOSPC: i32 = 28;

/// Links the guarded `wasi:filesystem/types` over the one wasmtime-wasi linked.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    getter: fn(&mut T) -> GuardedFsView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = types::add_to_linker::<T, GuardedFs>(linker, getter);
    linker.allow_shadowing(false);
    linked
}
