@preconcurrency import Glibc
import CMasq
import Foundation

/// The bpffs that holds masq's pins (`bpffs-root`).
enum BPFFS {
    static let magic: Int = 0xcafe_4a11
    /// Files the kernel puts in every new bpffs (bpf_preload's iterators); not masq's.
    static let kernelFiles: Set<String> = ["maps.debug", "progs.debug"]

    /// A directory masqd makes at the root of a bpffs it mounted itself, so that `uninstall`
    /// knows to unmount it (bpffs holds pins and directories only, and no dots in names).
    static let mountedMarker = "masqd_mounted"

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
