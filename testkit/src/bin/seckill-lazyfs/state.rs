//! The filesystem's state: the tree the mount shows, held in memory, over the backing directory,
//! which holds only what was fsynced.
//!
//! Every change (write, truncate, create, mkdir, unlink, rename, link, chmod, …) is applied to the
//! in-memory tree at once, so reads see it, as a page cache would. The backing directory changes
//! only on a sync:
//!
//! - fsync or fdatasync of a file writes its dirty pages, size and attributes into its backing
//!   file; and, being pragmatic the way ext4's journal is, it makes the file reachable under its
//!   current names: it creates a missing backing directory up its path and links each name of
//!   the file into the backing directory (it removes nothing: an old name from an unsynced rename
//!   stays until that directory is fsynced).
//! - fsync of a directory makes its backing directory's entries exactly the mount's: new names
//!   are linked (a file never synced becomes an empty file, a directory an empty directory),
//!   renamed ones moved, removed ones deleted. The directory's own name is made durable too.
//!
//! A power cut is the process ending without a sync: the backing directory is then exactly what
//! was synced. The backing directory itself is written without fsync: the simulated power cut
//! only drops this process's memory, not the host's page cache.
//!
//! A file's durable content is an open descriptor of its backing file, so it survives renames
//! and unlinks of backing names; directories are open descriptors too, and every backing
//! operation is relative to one (`openat`, `linkat`, `renameat`, …).

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The page cache's unit: a write dirties whole pages, a sync writes them back.
pub const PAGE: u64 = 4096;

pub type Ino = u64;
pub type Res<T> = Result<T, Errno>;

/// The mount's root: FUSE's fixed inode number 1.
pub const ROOT: Ino = 1;

/// Names the backing directory gets for a moment while an entry is replaced atomically.
const TMP_PREFIX: &str = ".seckill-lazyfs-tmp-";

/// Permission bits, owner and times of an inode, as the mount shows them.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Permission bits with set-user-id, set-group-id and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

impl Meta {
    pub fn new(mode: u32, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta {
            mode: mode & 0o7777,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    fn from_stat(st: &FileStat) -> Meta {
        let time = |secs: i64, nanos: i64| {
            u64::try_from(secs)
                .ok()
                .map(|s| UNIX_EPOCH + Duration::new(s, nanos.clamp(0, 999_999_999) as u32))
                .unwrap_or(UNIX_EPOCH)
        };
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// An object in the backing directory: its open descriptor and its inode number there.
#[derive(Debug, Clone)]
struct Durable {
    file: Arc<File>,
    ino: u64,
}

impl Durable {
    /// Opens `name` in the backing directory `dir` with `flags` (and close-on-exec).
    fn open(dir: &File, name: &OsStr, flags: OFlag) -> Res<Durable> {
        let fd = openat(dir, name, flags | OFlag::O_CLOEXEC, Mode::empty())?;
        Durable::new(File::from(fd))
    }

    fn new(file: File) -> Res<Durable> {
        let ino = fstat(&file)?.st_ino;
        Ok(Durable {
            file: Arc::new(file),
            ino,
        })
    }

    /// `/proc/self/fd/N`: what `linkat` follows to link the open file under a new name.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Whether a backing directory was removed (its link count is 0) while we held it open.
    fn removed(&self) -> bool {
        fstat(&*self.file)
            .map(|st| st.st_nlink == 0)
            .unwrap_or(true)
    }
}

/// A regular file: the backing file's first `base_len` bytes, overlaid with the dirty pages.
#[derive(Debug, Default)]
pub struct FileData {
    /// None until the file is first synced (or its name is, by a directory fsync).
    durable: Option<Durable>,
    /// How much of the backing file the mount still shows (a truncation shortens it); beyond
    /// it, and beyond the backing file, a page not dirty reads as zeros. Never above `size`.
    base_len: u64,
    /// The size the mount shows.
    pub size: u64,
    /// Pages written since the last sync, each `PAGE` bytes, by page index.
    pages: BTreeMap<u64, Box<[u8]>>,
}

#[derive(Debug)]
pub struct DirData {
    /// None for a directory made in the mount and not yet synced.
    durable: Option<Durable>,
    /// The entries, read from the backing directory on first use (None until then).
    children: Option<BTreeMap<OsString, Ino>>,
    /// The backing directory's link count, the directory's own until it is read.
    durable_nlink: u64,
}

#[derive(Debug)]
pub enum Node {
    File(FileData),
    Dir(DirData),
    Symlink(OsString),
}

#[derive(Debug)]
pub struct Inode {
    pub meta: Meta,
    pub node: Node,
    /// The inode's names in the mount, as (parent, name): one for a directory (none for the
    /// root), one per hard link for a file, none once unlinked.
    pub names: Vec<(Ino, OsString)>,
    /// Open file handles: an unlinked file's data lives until the last one is released.
    pub open: u32,
}

impl Inode {
    pub fn kind(&self) -> fuser::FileType {
        match self.node {
            Node::File(_) => fuser::FileType::RegularFile,
            Node::Dir(_) => fuser::FileType::Directory,
            Node::Symlink(_) => fuser::FileType::Symlink,
        }
    }
}

/// What the control socket's `stats` reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub writes: u64,
    pub written_bytes: u64,
    pub fsyncs: u64,
    pub fsyncdirs: u64,
    /// Bytes written to the backing directory by syncs.
    pub synced_bytes: u64,
}

pub struct State {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// The backing inode numbers of the objects we hold open, to their inode in the mount: a
    /// hard link read from the backing directory joins its inode, and a directory fsync tells a
    /// directory that moved elsewhere from one to delete.
    by_backing: HashMap<u64, Ino>,
    tmp_seq: u64,
    pub stats: Stats,
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32))
}

fn is(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

fn timespec(t: SystemTime) -> TimeSpec {
    TimeSpec::from_duration(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Permission bits, owner and times onto a backing object.
fn persist_meta(file: &File, meta: &Meta) -> Res<()> {
    fchown(
        file,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    // After fchown, which clears set-user-id and set-group-id bits.
    fchmod(file, Mode::from_bits_truncate(meta.mode))?;
    futimens(file, &timespec(meta.atime), &timespec(meta.mtime))
}

/// A backing directory's entries, without `.` and `..`.
fn list_dir(dir: &File) -> Res<Vec<OsString>> {
    // A descriptor of its own: reading moves a directory stream's position.
    let mut stream = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in stream.iter() {
        let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// The path of the backing directory `dir` (from `/proc/self/fd`), for what has no `*at` form.
fn dir_path(dir: &File) -> Res<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(io_errno)
}

impl State {
    /// The mount's tree over `backing`, read lazily: a directory's entries on first use.
    pub fn new(backing: &Path) -> Res<State> {
        let root = File::open(backing).map_err(io_errno)?;
        let st = fstat(&root)?;
        if !is(&st, SFlag::S_IFDIR) {
            return Err(Errno::ENOTDIR);
        }
        let durable = Durable::new(root)?;
        let mut state = State {
            inodes: HashMap::new(),
            next_ino: ROOT + 1,
            by_backing: HashMap::from([(durable.ino, ROOT)]),
            tmp_seq: 0,
            stats: Stats::default(),
        };
        state.inodes.insert(
            ROOT,
            Inode {
                meta: Meta::from_stat(&st),
                node: Node::Dir(DirData {
                    durable: Some(durable),
                    children: None,
                    durable_nlink: st.st_nlink,
                }),
                names: Vec::new(),
                open: 0,
            },
        );
        Ok(state)
    }

    pub fn get(&self, ino: Ino) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn file_mut(&mut self, ino: Ino) -> Res<&mut FileData> {
        match &mut self.get_mut(ino)?.node {
            Node::File(f) => Ok(f),
            Node::Dir(_) => Err(Errno::EISDIR),
            Node::Symlink(_) => Err(Errno::EINVAL),
        }
    }

    fn dir(&self, ino: Ino) -> Res<&DirData> {
        match &self.get(ino)?.node {
            Node::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Res<&mut DirData> {
        match &mut self.get_mut(ino)?.node {
            Node::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// The entries of a directory, read from the backing directory first if need be.
    pub fn children(&mut self, dir: Ino) -> Res<&BTreeMap<OsString, Ino>> {
        self.ensure_loaded(dir)?;
        self.dir(dir)?.children.as_ref().ok_or(Errno::EIO)
    }

    fn children_mut(&mut self, dir: Ino) -> Res<&mut BTreeMap<OsString, Ino>> {
        self.ensure_loaded(dir)?;
        self.dir_mut(dir)?.children.as_mut().ok_or(Errno::EIO)
    }

    /// Reads a directory's entries from its backing directory, once. Until then the mount has
    /// changed nothing in it, so the backing directory is what the mount shows.
    fn ensure_loaded(&mut self, dir: Ino) -> Res<()> {
        let d = self.dir(dir)?;
        if d.children.is_some() {
            return Ok(());
        }
        let backing = d.durable.clone().ok_or(Errno::EIO)?;
        let mut children = BTreeMap::new();
        for name in list_dir(&backing.file)? {
            if let Some(child) = self.load_entry(&backing.file, &name)? {
                children.insert(name.clone(), child);
                self.get_mut(child)?.names.push((dir, name));
            }
        }
        self.dir_mut(dir)?.children = Some(children);
        Ok(())
    }

    /// The inode for a backing directory's entry: a new one, or a hard link's. Sockets, fifos and
    /// devices are left out (neither Redis nor PostgreSQL keeps one in its data directory).
    fn load_entry(&mut self, dir: &File, name: &OsStr) -> Res<Option<Ino>> {
        let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let meta = Meta::from_stat(&st);
        let node = if is(&st, SFlag::S_IFREG) {
            if let Some(&ino) = self.by_backing.get(&st.st_ino) {
                return Ok(Some(ino));
            }
            let durable = Durable::open(dir, name, OFlag::O_RDWR | OFlag::O_NOFOLLOW)?;
            let size = st.st_size as u64;
            Node::File(FileData {
                durable: Some(durable),
                base_len: size,
                size,
                pages: BTreeMap::new(),
            })
        } else if is(&st, SFlag::S_IFDIR) {
            if self.by_backing.contains_key(&st.st_ino) {
                return Ok(None);
            }
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            Node::Dir(DirData {
                durable: Some(Durable::open(dir, name, flags)?),
                children: None,
                durable_nlink: st.st_nlink,
            })
        } else if is(&st, SFlag::S_IFLNK) {
            Node::Symlink(readlinkat(dir, name)?)
        } else {
            return Ok(None);
        };
        let ino = self.add_inode(meta, node);
        Ok(Some(ino))
    }

    fn add_inode(&mut self, meta: Meta, node: Node) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        let durable = match &node {
            Node::File(f) => f.durable.as_ref(),
            Node::Dir(d) => d.durable.as_ref(),
            Node::Symlink(_) => None,
        };
        if let Some(d) = durable {
            self.by_backing.insert(d.ino, ino);
        }
        self.inodes.insert(
            ino,
            Inode {
                meta,
                node,
                names: Vec::new(),
                open: 0,
            },
        );
        ino
    }

    /// `stat`'s link count.
    pub fn nlink(&self, ino: Ino) -> u32 {
        let Ok(inode) = self.get(ino) else { return 0 };
        match &inode.node {
            Node::Dir(d) => match &d.children {
                Some(children) => {
                    let subdirs = children
                        .values()
                        .filter(|c| matches!(self.get(**c).map(|i| &i.node), Ok(Node::Dir(_))))
                        .count();
                    2 + subdirs as u32
                }
                None => d.durable_nlink as u32,
            },
            _ => inode.names.len() as u32,
        }
    }

    /// `stat`'s size.
    pub fn size(&self, ino: Ino) -> u64 {
        match self.get(ino).map(|i| &i.node) {
            Ok(Node::File(f)) => f.size,
            Ok(Node::Symlink(target)) => target.len() as u64,
            _ => PAGE,
        }
    }

    fn touch(&mut self, ino: Ino) {
        if let Ok(inode) = self.get_mut(ino) {
            let now = SystemTime::now();
            inode.meta.mtime = now;
            inode.meta.ctime = now;
        }
    }

    pub fn lookup(&mut self, parent: Ino, name: &OsStr) -> Res<Ino> {
        self.children(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// A new file, directory or symbolic link named `name` in `parent`.
    pub fn make(&mut self, parent: Ino, name: &OsStr, meta: Meta, node: Node) -> Res<Ino> {
        if self.children(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.add_inode(meta, node);
        self.children_mut(parent)?.insert(name.to_owned(), ino);
        self.get_mut(ino)?.names.push((parent, name.to_owned()));
        self.touch(parent);
        Ok(ino)
    }

    pub fn new_file() -> Node {
        Node::File(FileData::default())
    }

    pub fn new_dir() -> Node {
        Node::Dir(DirData {
            durable: None,
            children: Some(BTreeMap::new()),
            durable_nlink: 2,
        })
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        let child = self.lookup(parent, name)?;
        if matches!(self.get(child)?.node, Node::Dir(_)) {
            return Err(Errno::EISDIR);
        }
        self.remove_name(parent, name, child)?;
        self.drop_if_dead(child);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Res<()> {
        let child = self.lookup(parent, name)?;
        if !self.children(child)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_name(parent, name, child)?;
        self.drop_dir(child);
        Ok(())
    }

    fn remove_name(&mut self, parent: Ino, name: &OsStr, child: Ino) -> Res<()> {
        self.children_mut(parent)?.remove(name);
        let inode = self.get_mut(child)?;
        if let Some(i) = inode
            .names
            .iter()
            .position(|(p, n)| *p == parent && n == name)
        {
            inode.names.remove(i);
        }
        inode.meta.ctime = SystemTime::now();
        self.touch(parent);
        Ok(())
    }

    /// A removed directory lets go of its backing directory: the next fsync of the backing
    /// parent deletes it.
    fn drop_dir(&mut self, dir: Ino) {
        if let Ok(d) = self.dir_mut(dir)
            && let Some(durable) = d.durable.take()
        {
            self.by_backing.remove(&durable.ino);
        }
    }

    /// A file without names or open handles: its data is gone, as on any filesystem.
    fn drop_if_dead(&mut self, ino: Ino) {
        let Ok(inode) = self.get_mut(ino) else { return };
        if !inode.names.is_empty() || inode.open > 0 {
            return;
        }
        if let Node::File(f) = &mut inode.node {
            let durable = f.durable.take();
            *f = FileData::default();
            if let Some(d) = durable {
                self.by_backing.remove(&d.ino);
            }
        }
    }

    pub fn opened(&mut self, ino: Ino) -> Res<()> {
        self.get_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn released(&mut self, ino: Ino) {
        if let Ok(inode) = self.get_mut(ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.drop_if_dead(ino);
    }

    /// rename(2) in the mount, with `RENAME_NOREPLACE` as `no_replace`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Res<()> {
        let src = self.lookup(parent, name)?;
        let src_is_dir = matches!(self.get(src)?.node, Node::Dir(_));
        self.ensure_loaded(new_parent)?;
        if src_is_dir {
            // Not into itself or below itself.
            let mut up = new_parent;
            loop {
                if up == src {
                    return Err(Errno::EINVAL);
                }
                match self.get(up)?.names.first() {
                    Some((p, _)) => up = *p,
                    None => break,
                }
            }
        }
        if let Some(dest) = self.children(new_parent)?.get(new_name).copied() {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            if dest == src {
                return Ok(());
            }
            let dest_is_dir = matches!(self.get(dest)?.node, Node::Dir(_));
            match (src_is_dir, dest_is_dir) {
                (true, true) => self.rmdir(new_parent, new_name)?,
                (false, false) => self.unlink(new_parent, new_name)?,
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
            }
        }
        self.children_mut(parent)?.remove(name);
        self.children_mut(new_parent)?
            .insert(new_name.to_owned(), src);
        let inode = self.get_mut(src)?;
        if let Some(entry) = inode
            .names
            .iter_mut()
            .find(|(p, n)| *p == parent && n == name)
        {
            *entry = (new_parent, new_name.to_owned());
        }
        inode.meta.ctime = SystemTime::now();
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    pub fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Res<()> {
        if matches!(self.get(ino)?.node, Node::Dir(_)) {
            return Err(Errno::EPERM);
        }
        if self.children(new_parent)?.contains_key(new_name) {
            return Err(Errno::EEXIST);
        }
        self.children_mut(new_parent)?
            .insert(new_name.to_owned(), ino);
        let inode = self.get_mut(ino)?;
        inode.names.push((new_parent, new_name.to_owned()));
        inode.meta.ctime = SystemTime::now();
        self.touch(new_parent);
        Ok(())
    }

    /// A page as the mount shows it when it is not dirty: the backing file's bytes below
    /// `base_len`, zeros after.
    fn clean_page(f: &FileData, index: u64) -> Res<Box<[u8]>> {
        let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
        let start = index * PAGE;
        if let Some(d) = &f.durable
            && start < f.base_len
        {
            let n = (f.base_len - start).min(PAGE) as usize;
            read_fully_at(&d.file, &mut page[..n], start)?;
        }
        Ok(page)
    }

    pub fn read(&mut self, ino: Ino, offset: u64, len: u32) -> Res<Vec<u8>> {
        let f = self.file_mut(ino)?;
        let end = f.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let index = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..][..n];
            if let Some(page) = f.pages.get(&index) {
                dst.copy_from_slice(&page[in_page..in_page + n]);
            } else if let Some(d) = &f.durable
                && pos < f.base_len
            {
                let m = ((f.base_len - pos) as usize).min(n);
                read_fully_at(&d.file, &mut dst[..m], pos)?;
            }
            pos += n as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Res<()> {
        let f = self.file_mut(ino)?;
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut pos = offset;
        while pos < end {
            let index = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            if !f.pages.contains_key(&index) {
                let page = Self::clean_page(f, index)?;
                f.pages.insert(index, page);
            }
            let page = f.pages.get_mut(&index).ok_or(Errno::EIO)?;
            page[in_page..in_page + n].copy_from_slice(&data[(pos - offset) as usize..][..n]);
            pos += n as u64;
        }
        f.size = f.size.max(end);
        self.stats.writes += 1;
        self.stats.written_bytes += data.len() as u64;
        self.touch(ino);
        Ok(())
    }

    pub fn truncate(&mut self, ino: Ino, size: u64) -> Res<()> {
        let f = self.file_mut(ino)?;
        if size < f.size {
            f.base_len = f.base_len.min(size);
            let first_gone = size.div_ceil(PAGE);
            f.pages.retain(|index, _| *index < first_gone);
            // The part of the last page past the new end reads as zeros if the file grows again.
            if !size.is_multiple_of(PAGE)
                && let Some(page) = f.pages.get_mut(&(size / PAGE))
            {
                page[(size % PAGE) as usize..].fill(0);
            }
        }
        f.size = size;
        self.touch(ino);
        Ok(())
    }

    /// Bytes in dirty pages, over every file.
    pub fn dirty_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| match &i.node {
                Node::File(f) => f.pages.len() as u64 * PAGE,
                _ => 0,
            })
            .sum()
    }

    /// fsync(2) and fdatasync(2): a file's data, size, attributes and names; a directory's
    /// entries (see the module's documentation).
    pub fn fsync(&mut self, ino: Ino) -> Res<()> {
        match self.get(ino)?.node {
            Node::File(_) => {
                self.stats.fsyncs += 1;
                self.sync_file(ino)
            }
            Node::Dir(_) => {
                self.stats.fsyncdirs += 1;
                self.sync_dir(ino)
            }
            Node::Symlink(_) => Ok(()),
        }
    }

    fn sync_file(&mut self, ino: Ino) -> Res<()> {
        for (parent, name) in self.get(ino)?.names.clone() {
            self.ensure_dir_durable(parent)?;
            self.place(parent, &name, ino)?;
        }
        let inode = self.get(ino)?;
        let meta = inode.meta.clone();
        let Node::File(f) = &inode.node else {
            return Ok(());
        };
        // A file that never had a durable name and has none now: nothing a power cut keeps.
        let Some(d) = f.durable.clone() else {
            return Ok(());
        };
        let backing_len = fstat(&*d.file)?.st_size as u64;
        if f.base_len < backing_len {
            // What a truncation cut off must not come back where the file grew again.
            d.file.set_len(f.base_len).map_err(io_errno)?;
        }
        let mut written = 0;
        for (&index, page) in &f.pages {
            let start = index * PAGE;
            if start >= f.size {
                continue;
            }
            let n = (f.size - start).min(PAGE) as usize;
            d.file.write_all_at(&page[..n], start).map_err(io_errno)?;
            written += n as u64;
        }
        d.file.set_len(f.size).map_err(io_errno)?;
        persist_meta(&d.file, &meta)?;
        let f = self.file_mut(ino)?;
        f.pages.clear();
        f.base_len = f.size;
        self.stats.synced_bytes += written;
        Ok(())
    }

    /// Makes the backing directory's entries the mount's.
    fn sync_dir(&mut self, dir: Ino) -> Res<()> {
        self.ensure_loaded(dir)?;
        self.ensure_dir_durable(dir)?;
        let backing = self.dir(dir)?.durable.clone().ok_or(Errno::EIO)?;
        let children = self.children(dir)?.clone();
        for (name, child) in &children {
            self.place(dir, name, *child)?;
        }
        for name in list_dir(&backing.file)? {
            if !children.contains_key(&name) {
                self.remove_backing_entry(&backing.file, &name)?;
            }
        }
        let meta = self.get(dir)?.meta.clone();
        persist_meta(&backing.file, &meta)
    }

    /// Gives a directory a backing directory, under its name in the mount, if it has none.
    fn ensure_dir_durable(&mut self, dir: Ino) -> Res<()> {
        let d = self.dir(dir)?;
        if let Some(durable) = &d.durable {
            if !durable.removed() {
                return Ok(());
            }
            // Deleted under us with a backing ancestor: it is made again, empty.
            let gone = durable.ino;
            self.by_backing.remove(&gone);
            self.dir_mut(dir)?.durable = None;
        }
        let (parent, name) = self.get(dir)?.names.first().cloned().ok_or(Errno::ENOENT)?;
        self.ensure_dir_durable(parent)?;
        self.place(parent, &name, dir)
    }

    fn tmp_name(&mut self) -> OsString {
        self.tmp_seq += 1;
        OsString::from(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            self.tmp_seq
        ))
    }

    /// Makes `name` in `parent`'s backing directory (which exists) refer to `child`'s backing
    /// object, creating that object if `child` has none: a link for a file, replacing what had
    /// the name atomically; a move for a directory.
    fn place(&mut self, parent: Ino, name: &OsStr, child: Ino) -> Res<()> {
        let dir = self.dir(parent)?.durable.clone().ok_or(Errno::EIO)?;
        let dir = &*dir.file;
        let existing = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        let inode = self.get(child)?;
        let meta = inode.meta.clone();
        match &inode.node {
            Node::File(f) => {
                let durable = f.durable.clone();
                if let (Some(d), Some(st)) = (&durable, &existing)
                    && d.ino == st.st_ino
                {
                    return Ok(());
                }
                let tmp = self.tmp_name();
                match durable {
                    Some(d) => {
                        match linkat(dir, &d.proc_path(), dir, &*tmp, AtFlags::AT_SYMLINK_FOLLOW) {
                            Ok(()) => {}
                            // Its every backing name was deleted: a copy of what was synced.
                            Err(Errno::ENOENT) => {
                                let copy = create_file(dir, &tmp, &meta)?;
                                copy_contents(&d.file, &copy.file)?;
                                self.set_file_durable(child, copy)?;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    None => {
                        let new = create_file(dir, &tmp, &meta)?;
                        self.set_file_durable(child, new)?;
                    }
                }
                if existing.as_ref().is_some_and(|st| is(st, SFlag::S_IFDIR)) {
                    self.clear_backing_entry(dir, name, parent)?;
                }
                renameat(dir, &*tmp, dir, name)?;
            }
            Node::Dir(d) => {
                let durable = d.durable.clone().filter(|d| !d.removed());
                match durable {
                    Some(d) => {
                        if existing.as_ref().is_some_and(|st| st.st_ino == d.ino) {
                            return Ok(());
                        }
                        if existing.is_some() {
                            self.clear_backing_entry(dir, name, parent)?;
                        }
                        let from = dir_path(&d.file)?;
                        renameat(dir, &from, dir, name)?;
                    }
                    None => {
                        if existing.is_some() {
                            self.clear_backing_entry(dir, name, parent)?;
                        }
                        mkdirat(dir, name, Mode::from_bits_truncate(meta.mode))?;
                        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
                        let new = Durable::open(dir, name, flags)?;
                        persist_meta(&new.file, &meta)?;
                        if let Some(old) = self.dir(child)?.durable.clone() {
                            self.by_backing.remove(&old.ino);
                        }
                        self.by_backing.insert(new.ino, child);
                        self.dir_mut(child)?.durable = Some(new);
                    }
                }
            }
            Node::Symlink(target) => {
                if let Some(st) = &existing
                    && is(st, SFlag::S_IFLNK)
                    && readlinkat(dir, name).ok().as_ref() == Some(target)
                {
                    return Ok(());
                }
                let target = target.clone();
                let tmp = self.tmp_name();
                symlinkat(&*target, dir, &*tmp)?;
                fchownat(
                    dir,
                    &*tmp,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                if existing.as_ref().is_some_and(|st| is(st, SFlag::S_IFDIR)) {
                    self.clear_backing_entry(dir, name, parent)?;
                }
                renameat(dir, &*tmp, dir, name)?;
            }
        }
        Ok(())
    }

    fn set_file_durable(&mut self, ino: Ino, new: Durable) -> Res<()> {
        self.by_backing.insert(new.ino, ino);
        let f = self.file_mut(ino)?;
        let old = f.durable.replace(new);
        if let Some(old) = old {
            self.by_backing.remove(&old.ino);
        }
        Ok(())
    }

    /// Frees `name` in the backing directory `dir` (of `parent`) for another object. A directory
    /// the mount moved elsewhere is moved there first (that rename becomes durable); any other
    /// is deleted.
    fn clear_backing_entry(&mut self, dir: &File, name: &OsStr, parent: Ino) -> Res<()> {
        let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if is(&st, SFlag::S_IFDIR) {
            if let Some(&live) = self.by_backing.get(&st.st_ino)
                && let Some((p, n)) = self.get(live)?.names.first().cloned()
                && !(p == parent && n == name)
            {
                self.ensure_dir_durable(p)?;
                return self.place(p, &n, live);
            }
            let path = dir_path(dir)?.join(name);
            std::fs::remove_dir_all(path).map_err(io_errno)
        } else {
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
        }
    }

    /// Deletes an entry of a backing directory that the mount's directory no longer has, but
    /// keeps a directory the mount moved elsewhere (it moves there when that is synced).
    fn remove_backing_entry(&mut self, dir: &File, name: &OsStr) -> Res<()> {
        let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if is(&st, SFlag::S_IFDIR) {
            let live = self
                .by_backing
                .get(&st.st_ino)
                .and_then(|ino| self.get(*ino).ok())
                .is_some_and(|inode| !inode.names.is_empty());
            if live {
                return Ok(());
            }
            let path = dir_path(dir)?.join(name);
            std::fs::remove_dir_all(path).map_err(io_errno)
        } else {
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
        }
    }

    /// statfs(2) of the backing directory.
    pub fn statfs(&self) -> Res<nix::sys::statvfs::Statvfs> {
        let root = self.dir(ROOT)?.durable.clone().ok_or(Errno::EIO)?;
        nix::sys::statvfs::fstatvfs(&*root.file)
    }
}

/// A new, empty backing file `name` in `dir`, with `meta`'s permissions and owner.
fn create_file(dir: &File, name: &OsStr, meta: &Meta) -> Res<Durable> {
    let fd = openat(
        dir,
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(meta.mode),
    )?;
    let file = File::from(fd);
    persist_meta(&file, meta)?;
    Durable::new(file)
}

fn copy_contents(from: &File, to: &File) -> Res<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    loop {
        let n = from.read_at(&mut buf, pos).map_err(io_errno)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all_at(&buf[..n], pos).map_err(io_errno)?;
        pos += n as u64;
    }
}

/// Fills `buf` from `offset`, with zeros past the end of the file.
fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> Res<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_errno(e)),
        }
    }
    buf[done..].fill(0);
    Ok(())
}
