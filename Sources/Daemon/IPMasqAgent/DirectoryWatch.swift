@preconcurrency import Glibc
import Foundation

/// Reports changes around one file by watching its directory with inotify, so that every way a
/// file changes is seen: written in place, replaced by rename, deleted and re-created, its
/// attributes changed, and Kubernetes' ConfigMap swap (`config -> ..data/config`, with `..data`
/// a symlink that is atomically renamed over). When the directory does not exist (yet), the
/// nearest existing ancestor is watched until it appears.
///
/// A reader thread blocks in poll(2); each wake-up yields one element to `events` (newest kept,
/// so a burst becomes one element). With no event for `safetyInterval`, it yields anyway: a
/// slow safety re-read, not the mechanism.
final class DirectoryWatch: Sendable {
    let events: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let inotifyFD: Int32
    private let stopPipe: (read: Int32, write: Int32)
    private let file: String
    private let safetyInterval: Duration

    init(file: String, safetyInterval: Duration = .seconds(60)) throws {
        self.file = file
        self.safetyInterval = safetyInterval
        (events, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        inotifyFD = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard inotifyFD >= 0 else { throw DirectoryWatchError(step: "inotify_init1", object: file, errno: errno) }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            close(inotifyFD)
            throw DirectoryWatchError(step: "pipe2", object: "inotify stop pipe", errno: errno)
        }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        stopPipe = (fds[0], fds[1])
    }

    deinit {
        close(inotifyFD)
        close(stopPipe.read)
        close(stopPipe.write)
    }

    /// Starts the reader thread; it ends after `stop()`.
    func start() {
        let thread = Thread { [self] in self.readLoop() }
        thread.name = "masq-inotify"
        thread.start()
    }

    func stop() {
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
    }

    private static let directoryEvents = UInt32(
        IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB
            | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

    /// Watches the file's directory, or its nearest existing ancestor. Adding a watch for a
    /// path already watched returns the same descriptor; a re-created directory gets a new one,
    /// and the old watch (gone with its directory, or of an ancestor no longer needed) is dropped.
    private func watchDirectory(previous: Int32?) -> Int32? {
        var dir = (file as NSString).deletingLastPathComponent
        while !dir.isEmpty && dir != "/" && !FileManager.default.fileExists(atPath: dir) {
            dir = (dir as NSString).deletingLastPathComponent
        }
        let wd = inotify_add_watch(inotifyFD, dir.isEmpty ? "/" : dir, Self.directoryEvents)
        if let previous, previous != wd { inotify_rm_watch(inotifyFD, previous) }
        return wd >= 0 ? wd : nil
    }

    private func readLoop() {
        var watch = watchDirectory(previous: nil)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        let timeoutMS = Int32(safetyInterval.components.seconds * 1000)
        while true {
            var fds = [pollfd(fd: inotifyFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, watch == nil ? 1000 : timeoutMS)
            if n < 0 && errno == EINTR { continue }
            if fds[1].revents != 0 { break }
            // Drain everything queued; what the events say matters less than that something moved.
            while read(inotifyFD, &buffer, buffer.count) > 0 {}
            // The directory may have appeared, vanished or been replaced: watch anew if so.
            watch = watchDirectory(previous: watch)
            if n >= 0 { continuation.yield() }
        }
        continuation.finish()
    }
}

/// A system call of the watch failed: the step, what it concerned and the errno.
struct DirectoryWatchError: Error, CustomStringConvertible {
    var step: String
    var object: String
    var errno: Int32

    var description: String {
        "\(step) \(object): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
