@preconcurrency import Glibc
import Synchronization

/// A wait on one file descriptor on a `BlockingPool` thread until stopped: netlink
/// notifications, inotify events. Each wake-up (the descriptor readable, or `timeout` passed
/// without it) calls `onWake` on that thread; `stop()` ends the wait through a pipe and
/// returns once the loop has ended, suspending the calling task rather than blocking its thread.
public final class PollLoop: Sendable {
    public enum Wake: Sendable {
        case readable
        case timedOut
    }

    /// A pipe whose write end wakes the loop to stop.
    private let stopPipe: (read: Int32, write: Int32)
    private let ended = Mutex<Ended>(.running)

    private enum Ended {
        case running
        case waiting(CheckedContinuation<Void, Never>)
        case done
    }

    public init() throws(PollLoopError) {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw PollLoopError(step: "pipe", errno: errno) }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        stopPipe = (ends[0], ends[1])
    }

    deinit {
        close(stopPipe.read)
        close(stopPipe.write)
    }

    /// Starts waiting on `fd` (`timeout`: per wait, nil for none; `timeout()` is asked before
    /// each wait). `onWake` returns whether to go on; `onEnd` runs once the loop has ended,
    /// stopped or not. A poll(2) failure other than EINTR ends the loop, passed to `onEnd`.
    public func start(fd: Int32, pool: BlockingPool = .shared, timeout: @escaping @Sendable () -> Duration? = { nil },
                      onWake: @escaping @Sendable (Wake) -> Bool,
                      onEnd: @escaping @Sendable (_ errno: Int32?) -> Void = { _ in }) {
        pool.submit { [self] in
            onEnd(loop(fd: fd, timeout: timeout, onWake: onWake))
            let waiter = ended.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state = .done }
                if case .waiting(let continuation) = state { return continuation }
                return nil
            }
            waiter?.resume()
        }
    }

    /// Asks the loop to end; returns at once.
    public func requestStop() {
        var one: UInt8 = 1
        _ = write(stopPipe.write, &one, 1)
    }

    /// Ends the loop and returns when it has ended (at once if it already had).
    public func stop() async {
        requestStop()
        await withCheckedContinuation { continuation in
            let done = ended.withLock { state in
                if case .done = state { return true }
                state = .waiting(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    private func loop(fd: Int32, timeout: @Sendable () -> Duration?, onWake: (Wake) -> Bool) -> Int32? {
        while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0)]
            let ms = timeout().map { Int32($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? -1
            let n = poll(&fds, nfds_t(fds.count), ms)
            if n < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if fds[1].revents != 0 { return nil }
            guard onWake(n == 0 ? .timedOut : .readable) else { return nil }
        }
    }
}

/// A system call of the loop failed: which, and the errno.
public struct PollLoopError: Error, CustomStringConvertible {
    public var step: String
    public var errno: Int32

    public var description: String {
        "\(step): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
