@preconcurrency import Glibc
import Blocking
import Foundation
import Synchronization

/// Reports changes around one file by watching its directory with inotify, so that every way a
/// file changes is seen: written in place, replaced by rename, deleted and re-created, its
/// attributes changed, and Kubernetes' ConfigMap swap (`config -> ..data/config`, with `..data`
/// a symlink that is atomically renamed over). When the directory does not exist (yet), the
/// nearest existing ancestor is watched until it appears.
///
/// A `PollLoop` waits on the inotify descriptor; each wake-up yields one element to `events`
/// (newest kept, so a burst becomes one element). With no event for `safetyInterval`, it
/// yields anyway: a slow safety re-read, not the mechanism.
final class DirectoryWatch: Sendable {
    let events: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    private let inotifyFD: Int32
    private let loop: PollLoop
    private let file: String
    private let safetyInterval: Duration
    /// The watch descriptor in force; nil while no directory on the path could be watched.
    private let watch = Mutex<Int32?>(nil)

    init(file: String, safetyInterval: Duration = .seconds(60)) throws {
        self.file = file
        self.safetyInterval = safetyInterval
        (events, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        inotifyFD = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard inotifyFD >= 0 else { throw DirectoryWatchError(step: "inotify_init1", object: file, errno: errno) }
        do {
            loop = try PollLoop()
        } catch {
            close(inotifyFD)
            throw DirectoryWatchError(step: error.step, object: "inotify stop pipe", errno: error.errno)
        }
    }

    deinit {
        close(inotifyFD)
    }

    /// Starts watching; it ends after `stop()`.
    func start() {
        watch.withLock { $0 = watchDirectory(previous: nil) }
        loop.start(fd: inotifyFD, timeout: { [self] in
            // Without a watch, look for the directory again every second.
            watch.withLock { $0 } == nil ? .seconds(1) : safetyInterval
        }, onWake: { [self] _ in
            // Drain everything queued; what the events say matters less than that something moved.
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while read(inotifyFD, &buffer, buffer.count) > 0 {}
            // The directory may have appeared, vanished or been replaced: watch anew if so.
            watch.withLock { $0 = watchDirectory(previous: $0) }
            continuation.yield()
            return true
        }, onEnd: { [continuation] _ in continuation.finish() })
    }

    /// Ends the watch; `events` finishes once it has.
    func stop() {
        loop.requestStop()
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
