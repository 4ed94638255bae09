import Foundation
import Synchronization

/// Threads for work that blocks in the kernel: netlink and inotify waits, map walks, the
/// conntrack GC. Swift concurrency's cooperative pool has one thread a core (two here), so
/// a blocked task there stalls every other task, the API among them; work submitted here
/// never runs on it.
///
/// The pool grows when a job finds no idle thread, so long-lived loops (each netlink monitor
/// and directory watch holds a thread while it runs) never starve short jobs; a thread idle
/// for `idleTimeout` ends, so the pool shrinks back after a burst.
public final class BlockingPool: Sendable {
    /// The process's pool.
    public static let shared = BlockingPool(name: "masq-blocking")

    private struct State {
        var jobs: [@Sendable () -> Void] = []
        var idle = 0
        var threads = 0
    }

    private let name: String
    private let idleTimeout: Duration
    private let state = Mutex(State())
    /// Counts queued jobs; idle threads wait on it.
    private let queued = DispatchSemaphore(value: 0)

    public init(name: String, idleTimeout: Duration = .seconds(30)) {
        self.name = name
        self.idleTimeout = idleTimeout
    }

    /// Runs `job` on a pool thread; returns at once.
    public func submit(_ job: @escaping @Sendable () -> Void) {
        let spawn = state.withLock { state in
            state.jobs.append(job)
            guard state.idle == 0 else {
                state.idle -= 1
                return false
            }
            state.threads += 1
            return true
        }
        queued.signal()
        if spawn {
            let thread = Thread { [self] in work() }
            thread.name = name
            thread.start()
        }
    }

    /// Runs `body` on a pool thread and returns its result; the calling task is suspended, not
    /// blocked, meanwhile.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit { continuation.resume(with: Result { try body() }) }
        }
    }

    /// A thread's life: take a job, run it, wait (idle) for the next, end after `idleTimeout`.
    private func work() {
        let timeout = Double(idleTimeout.components.seconds) + Double(idleTimeout.components.attoseconds) / 1e18
        while true {
            // A thread that submit() counted as idle (or just spawned) has a job waiting.
            if queued.wait(timeout: .now() + timeout) == .timedOut {
                let ends = state.withLock { state in
                    // Not handed a job while timing out: this thread may end.
                    guard state.idle > 0 else { return false }
                    state.idle -= 1
                    state.threads -= 1
                    return true
                }
                if ends { return }
                continue
            }
            let job = state.withLock { $0.jobs.removeFirst() }
            job()
            state.withLock { $0.idle += 1 }
        }
    }
}
