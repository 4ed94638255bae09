@preconcurrency import Glibc
import CMasq
import Foundation

/// Another process (a running masqd) holds the bpffs root.
public struct RootInUse: Error, CustomStringConvertible {
    public var root: String
    /// Whether `masqd uninstall` asked (else a second masqd).
    public var uninstalling = false

    public var description: String {
        uninstalling
            ? "bpffs-root \(root): a masqd is running on these pinned maps; stop it first (systemctl stop masqd), or it would go on without its datapath"
            : "bpffs-root \(root): another masqd is running on these pinned maps; stop it first (systemctl stop masqd), or give this one another bpffs-root"
    }
}

/// The bpffs that holds masq's pins (`bpffs-root`).
enum BPFFS {
    static let magic: Int = 0xcafe_4a11
    /// Files the kernel puts in every new bpffs (bpf_preload's iterators); not masq's.
    static let kernelFiles: Set<String> = ["maps.debug", "progs.debug"]

    /// A directory masqd makes at the root of a bpffs it mounted itself, so that `uninstall`
    /// knows to unmount it (bpffs holds pins and directories only, and no dots in names).
    static let mountedMarker = "masqd_mounted"

    /// A directory `netns_<inode>` under the root names the network namespace masqd attaches in,
    /// which `uninstall` must run in (it finds tc filters by ifindex).
    static let netnsMarkerPrefix = "netns_"

    /// This process's network namespace: the inode number of /proc/self/ns/net.
    static func currentNetns() -> UInt64? {
        var st = stat()
        return stat("/proc/self/ns/net", &st) == 0 ? UInt64(st.st_ino) : nil
    }

    /// Marks `root` with this process's network namespace, replacing an earlier mark.
    static func markNetns(root: String) throws {
        guard let netns = currentNetns() else { return }
        let mark = netnsMarkerPrefix + String(netns)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        where entry.hasPrefix(netnsMarkerPrefix) && entry != mark {
            rmdir(root + "/" + entry)
        }
        if mkdir(root + "/" + mark, 0o700) != 0 && errno != EEXIST {
            throw BPFError("mark the network namespace in", root, errno: errno)
        }
    }

    /// The network namespace `root` is marked with, if any.
    static func markedNetns(root: String) -> UInt64? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return entries.lazy.compactMap { $0.hasPrefix(netnsMarkerPrefix) ? UInt64($0.dropFirst(netnsMarkerPrefix.count)) : nil }.first
    }

    /// Whether `path` (which must exist) lies on a bpffs.
    static func isBPFFS(_ path: String) -> Bool {
        masq_fs_type(path) == magic
    }

    /// Makes sure `root` exists on a bpffs. When the bpffs is not mounted, mounts it: at
    /// /sys/fs/bpf for roots below it (the conventional place), else at `root` itself.
    /// Returns the mount point it mounted, or nil when one was there already.
    static func prepare(root: String) throws -> String? {
        var existing = root
        while !FileManager.default.fileExists(atPath: existing) {
            existing = (existing as NSString).deletingLastPathComponent
        }
        var mounted: String?
        if !isBPFFS(existing) {
            let target = root.hasPrefix("/sys/fs/bpf/") ? "/sys/fs/bpf" : root
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            guard mount("bpf", target, "bpf", 0, nil) == 0 else {
                throw BPFError("mount bpffs", target, errno: errno)
            }
            try FileManager.default.createDirectory(atPath: target + "/" + mountedMarker, withIntermediateDirectories: false)
            mounted = target
        }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return mounted
    }

    /// `root` held by this process: an exclusive flock on the directory, released when the
    /// process ends however it ends.
    final class Lock: Sendable {
        private let fd: Int32

        fileprivate init(fd: Int32) {
            self.fd = fd
        }

        /// Whether the locked directory is still the one at `root` (not removed, or removed
        /// and made again, which leaves the lock on a directory nobody can reach).
        func holds(_ root: String) -> Bool {
            var locked = stat(), current = stat()
            return fstat(fd, &locked) == 0 && stat(root, &current) == 0
                && locked.st_ino == current.st_ino && locked.st_dev == current.st_dev
        }

        deinit {
            close(fd)
        }
    }

    /// Takes `root` (which must exist) for this process, or throws `RootInUse` when another
    /// holds it: a second masqd on the same pins would rewrite the first one's maps under its
    /// running programs.
    static func lock(root: String) throws -> Lock {
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw BPFError("open", root, errno: errno) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let err = errno
            close(fd)
            if err == EWOULDBLOCK { throw RootInUse(root: root) }
            throw BPFError("lock", root, errno: err)
        }
        return Lock(fd: fd)
    }

    /// The bpffs masqd mounted itself for `root` (where `prepare` would have), if it did.
    static func mountedByMasqd(root: String) -> String? {
        let target = root.hasPrefix("/sys/fs/bpf/") ? "/sys/fs/bpf" : root
        return FileManager.default.fileExists(atPath: target + "/" + mountedMarker) ? target : nil
    }

    /// Unmounts a bpffs masqd mounted, unless something else was pinned there since: then it
    /// stays, and so does the marker. Returns whether it was unmounted.
    static func unmountIfUnused(_ mountPoint: String) throws -> Bool {
        let others = try FileManager.default.contentsOfDirectory(atPath: mountPoint)
            .filter { $0 != mountedMarker && !kernelFiles.contains($0) }
        guard others.isEmpty else { return false }
        rmdir(mountPoint + "/" + mountedMarker)
        guard umount2(mountPoint, 0) == 0 else { throw BPFError("unmount bpffs", mountPoint, errno: errno) }
        return true
    }
}
