//! The FUSE side: each request of the kernel becomes a call on the [`State`], under one lock.
//! Open file handles and directory listings live here too.

use crate::state::{Ino, Meta, Node, PAGE, ROOT, Res, State};
use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache an entry or attributes. Every change comes through the kernel,
/// so its caches stay right; a short time only bounds the damage of a bug.
const TTL: Duration = Duration::from_secs(1);

enum Handle {
    /// `sync`: opened with `O_SYNC` or `O_DSYNC`, so every write is synced.
    File { sync: bool },
    /// The listing as it was at opendir, as (inode, type, name), `.` and `..` first.
    Dir(Vec<(Ino, FileType, OsString)>),
}

pub struct Inner {
    pub state: State,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

impl Inner {
    fn add_handle(&mut self, handle: Handle) -> u64 {
        self.next_fh += 1;
        self.handles.insert(self.next_fh, handle);
        self.next_fh
    }
}

pub type Shared = Arc<Mutex<Inner>>;

pub fn shared(state: State) -> Shared {
    Arc::new(Mutex::new(Inner {
        state,
        handles: HashMap::new(),
        next_fh: 0,
    }))
}

pub fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct LazyFs {
    pub shared: Shared,
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e as i32)
}

fn attr(state: &State, ino: Ino) -> Res<FileAttr> {
    let inode = state.get(ino)?;
    let size = state.size(ino);
    let meta = &inode.meta;
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: meta.atime,
        mtime: meta.mtime,
        ctime: meta.ctime,
        crtime: meta.ctime,
        kind: inode.kind(),
        perm: meta.mode as u16,
        nlink: state.nlink(ino),
        uid: meta.uid,
        gid: meta.gid,
        rdev: 0,
        blksize: PAGE as u32,
        flags: 0,
    })
}

/// The owner of a new inode: the caller, with the parent's group and set-group-id bit for a
/// directory when the parent has that bit (as ext4 does).
fn new_meta(state: &State, req: &Request, parent: Ino, mode: u32, dir: bool) -> Res<Meta> {
    let parent_meta = &state.get(parent)?.meta;
    let setgid = parent_meta.mode & 0o2000 != 0;
    let gid = if setgid { parent_meta.gid } else { req.gid() };
    let mode = if setgid && dir { mode | 0o2000 } else { mode };
    Ok(Meta::new(mode, req.uid(), gid))
}

impl LazyFs {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared)
    }

    fn reply_entry(&self, reply: ReplyEntry, result: impl FnOnce(&mut State) -> Res<Ino>) {
        let mut inner = self.inner();
        match result(&mut inner.state).and_then(|ino| attr(&inner.state, ino)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_empty(&self, reply: ReplyEmpty, result: impl FnOnce(&mut State) -> Res<()>) {
        match result(&mut self.inner().state) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Opens a new handle, the one `handle` makes from the state, or answers its error.
    fn reply_opened(&self, reply: ReplyOpen, handle: impl FnOnce(&mut State) -> Res<Handle>) {
        let mut inner = self.inner();
        match handle(&mut inner.state) {
            Ok(handle) => {
                let fh = inner.add_handle(handle);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.reply_entry(reply, |st| st.lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(&self.inner().state, ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut inner = self.inner();
        let st = &mut inner.state;
        let result = (|| {
            if let Some(size) = size {
                st.truncate(ino.0, size)?;
            }
            let meta = &mut st.get_mut(ino.0)?.meta;
            if let Some(mode) = mode {
                meta.mode = mode & 0o7777;
            }
            if let Some(uid) = uid {
                meta.uid = uid;
            }
            if let Some(gid) = gid {
                meta.gid = gid;
            }
            if let Some(t) = atime {
                meta.atime = time(t);
            }
            if let Some(t) = mtime {
                meta.mtime = time(t);
            }
            meta.ctime = SystemTime::now();
            attr(st, ino.0)
        })();
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inner = self.inner();
        match inner.state.get(ino.0).map(|i| &i.node) {
            Ok(Node::Symlink(target)) => {
                reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
            }
            Ok(_) => reply.error(fuser::Errno::EINVAL),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: fifos, sockets and devices are no part of what this is for.
        if mode & nix::sys::stat::SFlag::S_IFMT.bits() != nix::sys::stat::SFlag::S_IFREG.bits() {
            reply.error(fuser::Errno::EPERM);
            return;
        }
        self.reply_entry(reply, |st| {
            let meta = new_meta(st, req, parent.0, mode & !umask, false)?;
            st.make(parent.0, name, meta, State::new_file())
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(reply, |st| {
            let meta = new_meta(st, req, parent.0, mode & !umask, true)?;
            st.make(parent.0, name, meta, State::new_dir())
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(reply, |st| st.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty(reply, |st| st.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.reply_entry(reply, |st| {
            let meta = new_meta(st, req, parent.0, 0o777, false)?;
            let node = Node::Symlink(target.as_os_str().to_owned());
            st.make(parent.0, link_name, meta, node)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(fuser::Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.reply_empty(reply, |st| {
            st.rename(parent.0, name, newparent.0, newname, no_replace)
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.reply_entry(reply, |st| {
            st.link(ino.0, newparent.0, newname)?;
            Ok(ino.0)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.reply_opened(reply, |st| {
            match st.get(ino.0)?.node {
                Node::File(_) => st.opened(ino.0)?,
                Node::Dir(_) => return Err(Errno::EISDIR),
                Node::Symlink(_) => return Err(Errno::ELOOP),
            }
            Ok(Handle::File {
                sync: is_sync(flags),
            })
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.inner().state.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut inner = self.inner();
        let sync = is_sync(flags)
            || matches!(
                inner.handles.get(&fh.0),
                Some(Handle::File { sync: true, .. })
            );
        let result = inner.state.write(ino.0, offset, data).and_then(|()| {
            if sync {
                inner.state.fsync(ino.0)
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) syncs nothing, on this filesystem as on ext4.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut inner = self.inner();
        inner.handles.remove(&fh.0);
        inner.state.released(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync syncs what fsync does: size and attributes with the data.
        self.reply_empty(reply, |st| st.fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.reply_opened(reply, |st| {
            let parent = st.get(ino.0)?.names.first().map_or(ROOT, |(p, _)| *p);
            let children: Vec<(OsString, Ino)> = st
                .children(ino.0)?
                .iter()
                .map(|(n, i)| (n.clone(), *i))
                .collect();
            let mut entries = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (parent, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in children {
                entries.push((child, st.get(child)?.kind(), name));
            }
            Ok(Handle::Dir(entries))
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let inner = self.inner();
        let Some(Handle::Dir(entries)) = inner.handles.get(&fh.0) else {
            reply.error(fuser::Errno::EBADF);
            return;
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            // The offset the kernel passes back for the next call: the next entry's index.
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inner().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(reply, |st| st.fsync(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.inner().state.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut inner = self.inner();
        let made = (|| {
            let st = &mut inner.state;
            let meta = new_meta(st, req, parent.0, mode & !umask, false)?;
            let ino = st.make(parent.0, name, meta, State::new_file())?;
            st.opened(ino)?;
            attr(st, ino)
        })();
        match made {
            Ok(a) => {
                let sync = is_sync(OpenFlags(flags));
                let fh = inner.add_handle(Handle::File { sync });
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Mode 0 only (allocate, growing the file); glibc's posix_fallocate writes zeros itself
        // when a filesystem refuses.
        if mode != 0 {
            reply.error(fuser::Errno::from_i32(Errno::EOPNOTSUPP as i32));
            return;
        }
        self.reply_empty(reply, |st| {
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            if end > st.size(ino.0) {
                st.truncate(ino.0, end)?;
            }
            Ok(())
        });
    }
}

fn is_sync(flags: OpenFlags) -> bool {
    OFlag::from_bits_truncate(flags.0).intersects(OFlag::O_SYNC | OFlag::O_DSYNC)
}
