@preconcurrency import Glibc
import CMasq
import Foundation

/// The bpffs that holds masq's pins (`bpffs-root`).
enum BPFFS {
    static let magic: Int = 0xcafe_4a11
    /// Files the kernel puts in every new bpffs (bpf_preload's iterators); not masq's.
    static let kernelFiles: Set<String> = ["maps.debug", "progs.debug"]

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
            mounted = target
        }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return mounted
    }
}
