@preconcurrency import Glibc
import CSystemd
import Daemon
import Foundation

/// Where an API server listens: for the control API, a socket systemd passed (socket
/// activation) or a path masqd binds itself with mode 0660 and group `socket-group`; for the
/// metrics listener, a TCP address (`prometheus-serve-addr`).
enum ControlSocket: Sendable, Equatable {
    /// A listening Unix stream socket inherited through LISTEN_FDS.
    case inherited(fd: Int32, path: String?)
    /// A path to bind.
    case path(String, group: String?)
    /// A TCP address to bind.
    case tcp(ServeAddress)

    /// The socket systemd passed, if masqd was started with LISTEN_FDS (a socket named
    /// "masqd", else the first listening Unix stream socket); otherwise `.path`. Consumes
    /// LISTEN_* from the environment so children do not inherit them.
    static func resolve(path: String, group: String?) throws(ControlSocketError) -> ControlSocket {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        defer {
            if let names {
                for i in 0..<Int(max(count, 0)) { free(names[i]) }
                free(names)
            }
        }
        guard count > 0 else { return .path(path, group: group) }
        var candidates: [(fd: Int32, name: String)] = []
        for i in 0..<count {
            let fd = SD_LISTEN_FDS_START + i
            let name = names?[Int(i)].map { String(cString: $0) } ?? ""
            if sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 {
                candidates.append((fd, name))
            }
        }
        guard let chosen = candidates.first(where: { $0.name == "masqd" }) ?? candidates.first else {
            throw ControlSocketError("LISTEN_FDS passed \(count) socket(s), none a listening Unix stream socket")
        }
        return .inherited(fd: chosen.fd, path: boundPath(of: chosen.fd))
    }

    /// Whether something accepts connections on the Unix socket at `path` (a stale socket file
    /// refuses them).
    static func isServing(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let fits = withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            guard bytes.count < raw.count else { return false }
            raw.copyBytes(from: bytes)
            return true
        }
        guard fits else { return false }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }

    /// The path a Unix socket is bound to (for logs and status).
    static func boundPath(of fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return nil }
        let path = withUnsafeBytes(of: address.sun_path) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return path.isEmpty ? nil : path
    }

    /// Prepares a freshly bound socket file: mode 0660, group `group`, then moves it to `path`.
    /// Binding happens at a temporary name first, so the socket appears at its real path only
    /// with its final mode and group.
    static func publish(temporary: String, at path: String, group: String?) throws(ControlSocketError) {
        if chmod(temporary, 0o660) != 0 {
            throw ControlSocketError("socket-path \(path): chmod 0660 failed: \(String(cString: strerror(errno)))")
        }
        if let group {
            // Checked when the config was read; the group may have gone since.
            guard let gid = DaemonConfig.groupID(group) else {
                throw ControlSocketError("socket-group: no group '\(group)' on this system")
            }
            if chown(temporary, uid_t.max, gid) != 0 {
                throw ControlSocketError("socket-group \(group): chown of \(path) failed: \(String(cString: strerror(errno)))")
            }
        }
        if rename(temporary, path) != 0 {
            throw ControlSocketError("socket-path \(path): cannot move the socket in place: \(String(cString: strerror(errno)))")
        }
    }

    /// Creates the socket's directory (0755) when missing.
    static func prepareDirectory(for path: String) throws(ControlSocketError) {
        let dir = (path as NSString).deletingLastPathComponent
        guard !dir.isEmpty, !FileManager.default.fileExists(atPath: dir) else { return }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        } catch {
            throw ControlSocketError("socket-path \(path): cannot create \(dir): \(error.localizedDescription)")
        }
    }
}

struct ControlSocketError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Who is on the other end of a connection (SO_PEERCRED), read once per connection.
struct PeerCredentials: Sendable, Equatable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32

    /// Nobody: what a connection whose credentials cannot be read is treated as.
    static let unknown = PeerCredentials(pid: 0, uid: UInt32.max, gid: UInt32.max)

    var isRoot: Bool { uid == 0 }

    /// `struct ucred` of <sys/socket.h> (Glibc hides it behind _GNU_SOURCE): what SO_PEERCRED returns.
    struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }
}
