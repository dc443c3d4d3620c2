import CFuse3
import Glibc
import UDMCore

/// The libfuse low-level callbacks, on libfuse worker threads. Metadata requests reply before
/// returning; read, write, fsync and fallocate queue a request on the disk and return at once,
/// and the reply comes from the request's completion (`FuseRequest`). State comes only from
/// the session's userdata (the `DiskDirectory`) and the open file's handle (a retained
/// `ExposedDisk`).
enum FuseOperations {
    static let rootInode: fuse_ino_t = 1
    /// The kernel asks again at once: sizes change on resume and disks come and go.
    static let cacheTimeout: Double = 0

    static var table: fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            guard let conn else { return }
            conn.pointee.max_write = 1 << 20
            // The kernel keeps at most max_background asynchronous requests (a loop device's
            // direct I/O, libaio) in flight to the daemon, for all disks of the mount together.
            // Set from the request pool, so that one disk holding its I/O (suspended, delayed)
            // cannot use up what the kernel lets through for the others (root may raise it).
            let background = FuseOperations.directory(userdata: userdata).requests.backgroundLimit
            conn.pointee.max_background = UInt32(background)
            conn.pointee.congestion_threshold = UInt32(background * 3 / 4)
            if conn.pointee.capable & UInt32(FUSE_CAP_ASYNC_DIO) != 0 {
                conn.pointee.want |= UInt32(FUSE_CAP_ASYNC_DIO)
            }
            // O_TRUNC arrives with open instead of as a truncate, so that it can be ignored as a
            // block device ignores it (`dd of=MOUNT/NAME` works); explicit truncates are refused.
            if conn.pointee.capable & UInt32(FUSE_CAP_ATOMIC_O_TRUNC) != 0 {
                conn.pointee.want |= UInt32(FUSE_CAP_ATOMIC_O_TRUNC)
            }
            // Writes must reach the disk when write() returns, as on a block device.
            conn.pointee.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
        }
        ops.lookup = { req, parent, name in
            guard parent == FuseOperations.rootInode, let name, let disk = FuseOperations.directory(req).disk(name: String(cString: name)) else {
                fuse_reply_err(req, ENOENT)
                return
            }
            var entry = fuse_entry_param()
            entry.ino = disk.inode
            entry.generation = 1
            entry.attr = FuseOperations.attributes(of: disk, FuseOperations.directory(req))
            entry.attr_timeout = FuseOperations.cacheTimeout
            entry.entry_timeout = FuseOperations.cacheTimeout
            fuse_reply_entry(req, &entry)
        }
        ops.getattr = { req, inode, _ in
            let directory = FuseOperations.directory(req)
            var attr: stat
            if inode == FuseOperations.rootInode {
                attr = FuseOperations.rootAttributes(directory)
            } else if let disk = directory.disk(inode: inode) {
                attr = FuseOperations.attributes(of: disk, directory)
            } else {
                fuse_reply_err(req, ENOENT)
                return
            }
            fuse_reply_attr(req, &attr, FuseOperations.cacheTimeout)
        }
        ops.setattr = { req, inode, _, toSet, _ in
            let changesContent = Int32(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)
            guard toSet & changesContent == 0 else {
                fuse_reply_err(req, EPERM)
                return
            }
            let directory = FuseOperations.directory(req)
            guard let disk = directory.disk(inode: inode) else {
                fuse_reply_err(req, inode == FuseOperations.rootInode ? EPERM : ENOENT)
                return
            }
            var attr = FuseOperations.attributes(of: disk, directory)
            fuse_reply_attr(req, &attr, FuseOperations.cacheTimeout)
        }
        ops.open = { req, inode, fi in
            guard let fi, let disk = FuseOperations.directory(req).disk(inode: inode) else {
                fuse_reply_err(req, ENOENT)
                return
            }
            disk.openCount.add(1, ordering: .relaxed)
            fi.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(disk).toOpaque()))
            // Every read and write reaches the daemon: the disk's content is what its table
            // says now, not what a page cache remembers from before a reload.
            fi.pointee.direct_io = 1
            fi.pointee.keep_cache = 0
            if fuse_reply_open(req, fi) != 0 {
                FuseOperations.release(fi)
            }
        }
        ops.release = { req, _, fi in
            if let fi { FuseOperations.release(fi) }
            fuse_reply_err(req, 0)
        }
        ops.read = { req, _, size, offset, fi in
            DiskIO.read(FuseOperations.disk(fi), req, count: size, offset: Int(offset))
        }
        ops.write = { req, _, buffer, size, offset, fi in
            let flags: BioFlags = (fi.map { $0.pointee.flags & O_DSYNC != 0 } ?? false) ? [.fua] : []
            DiskIO.write(FuseOperations.disk(fi), req, data: UnsafeRawPointer(buffer!), count: size, offset: Int(offset), flags: flags)
        }
        ops.flush = { req, _, _ in fuse_reply_err(req, 0) }
        ops.fsync = { req, _, _, fi in
            DiskIO.flush(FuseOperations.disk(fi), req)
        }
        ops.fallocate = { req, _, mode, offset, length, fi in
            FuseOperations.fallocate(FuseOperations.disk(fi), req, mode: mode, offset: Int(offset), count: Int(length))
        }
        ops.readdir = { req, inode, size, offset, _ in
            guard inode == FuseOperations.rootInode else {
                fuse_reply_err(req, ENOTDIR)
                return
            }
            FuseOperations.readDirectory(req, size: size, offset: Int(offset))
        }
        ops.rename = { req, _, _, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.unlink = { req, _, _ in fuse_reply_err(req, EPERM) }
        ops.mknod = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.mkdir = { req, _, _, _ in fuse_reply_err(req, EPERM) }
        ops.create = { req, _, _, _, _ in fuse_reply_err(req, EPERM) }
        return ops
    }

    private static func directory(_ req: fuse_req_t?) -> DiskDirectory {
        Unmanaged<DiskDirectory>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    private static func directory(userdata: UnsafeMutableRawPointer?) -> DiskDirectory {
        Unmanaged<DiskDirectory>.fromOpaque(userdata!).takeUnretainedValue()
    }

    /// The disk behind an open file handle (retained by `open`, released by `release`).
    private static func disk(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> ExposedDisk {
        Unmanaged<ExposedDisk>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(fi!.pointee.fh))!).takeUnretainedValue()
    }

    private static func release(_ fi: UnsafeMutablePointer<fuse_file_info>) {
        let handle = Unmanaged<ExposedDisk>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(fi.pointee.fh))!)
        handle.takeUnretainedValue().openCount.subtract(1, ordering: .relaxed)
        handle.release()
    }

    /// PUNCH_HOLE|KEEP_SIZE discards (or writes zeros where a discard would not read back as
    /// zeros); ZERO_RANGE writes zeros; plain allocation inside the disk has nothing to do.
    private static func fallocate(_ disk: ExposedDisk, _ req: fuse_req_t?, mode: Int32, offset: Int, count: Int) {
        let punchHole: Int32 = 0x02, keepSize: Int32 = 0x01, zeroRange: Int32 = 0x10
        switch mode {
        case punchHole | keepSize:
            DiskIO.zero(disk, req, offset: offset, count: count, op: DiskIO.punchOp(disk, offset: offset, count: count))
        case zeroRange, zeroRange | keepSize:
            DiskIO.zero(disk, req, offset: offset, count: count, op: .writeZeroes)
        case 0, keepSize:
            fuse_reply_err(req, offset + count <= disk.byteSize ? 0 : ENOSPC)
        default:
            fuse_reply_err(req, EOPNOTSUPP)
        }
    }

    private static func attributes(of disk: ExposedDisk, _ directory: DiskDirectory) -> stat {
        var attr = stat()
        attr.st_ino = UInt(disk.inode)
        attr.st_mode = S_IFREG | 0o600
        attr.st_nlink = 1
        attr.st_size = disk.byteSize
        attr.st_blksize = 4096
        attr.st_blocks = disk.byteSize / 512
        attr.st_mtim = timespec(tv_sec: directory.mountTime, tv_nsec: 0)
        attr.st_ctim = attr.st_mtim
        attr.st_atim = attr.st_mtim
        return attr
    }

    private static func rootAttributes(_ directory: DiskDirectory) -> stat {
        var attr = stat()
        attr.st_ino = UInt(rootInode)
        attr.st_mode = S_IFDIR | 0o755
        attr.st_nlink = 2
        attr.st_mtim = timespec(tv_sec: directory.mountTime, tv_nsec: 0)
        attr.st_ctim = attr.st_mtim
        attr.st_atim = attr.st_mtim
        return attr
    }

    /// "." and ".." then the disks by name; `offset` is the index to continue from.
    private static func readDirectory(_ req: fuse_req_t?, size: Int, offset: Int) {
        let directory = directory(req)
        var names: [(String, stat)] = [(".", rootAttributes(directory)), ("..", rootAttributes(directory))]
        names += directory.all.map { ($0.name, attributes(of: $0, directory)) }
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
        defer { buffer.deallocate() }
        var used = 0
        var index = offset
        while index < names.count {
            var attr = names[index].1
            let needed = fuse_add_direntry(req, buffer + used, size - used, names[index].0, &attr, off_t(index + 1))
            if needed > size - used { break }
            used += needed
            index += 1
        }
        fuse_reply_buf(req, buffer, used)
    }
}
