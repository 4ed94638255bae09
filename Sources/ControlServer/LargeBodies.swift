import Synchronization

/// Large response bodies (a conntrack page, a port listing: up to megabytes each) being built
/// or written at once, bounded. A client that asks and never reads holds its answer in masqd
/// until the connection's idle timeout closes it: 200 such connections held 600 MB before
/// this bound. A request beyond it waits for a permit, holding nothing, and is answered 503
/// if none comes within `wait`.
final class LargeBodies: Sendable {
    /// A permit, given back when it goes away (the request answered, or its connection gone).
    final class Permit: Sendable {
        private let owner: LargeBodies

        fileprivate init(owner: LargeBodies) {
            self.owner = owner
        }

        deinit {
            owner.release()
        }
    }

    private enum Waiter {
        /// Counted, its continuation not made yet.
        case arriving
        case waiting(CheckedContinuation<Bool, Never>)
        /// Given a permit before its continuation was made.
        case granted
    }

    private struct State {
        var free: Int
        var nextID: UInt64 = 0
        /// In arrival order.
        var waiters: [(id: UInt64, waiter: Waiter)] = []
    }

    private let state: Mutex<State>

    init(permits: Int) {
        state = Mutex(State(free: permits))
    }

    /// A permit, at once or when one is given back within `wait`; nil after that.
    func acquire(within wait: Duration) async -> Permit? {
        let id: UInt64? = state.withLock { s in
            if s.free > 0, s.waiters.isEmpty {
                s.free -= 1
                return nil
            }
            s.nextID += 1
            s.waiters.append((s.nextID, .arriving))
            return s.nextID
        }
        guard let id else { return Permit(owner: self) }
        let timer = Task {
            guard (try? await Task.sleep(for: wait)) != nil else { return }
            self.giveUp(id)
        }
        defer { timer.cancel() }
        let granted = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let answer: Bool? = state.withLock { s in
                guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return false }
                if case .granted = s.waiters[index].waiter {
                    s.waiters.remove(at: index)
                    return true
                }
                s.waiters[index].waiter = .waiting(continuation)
                return nil
            }
            if let answer { continuation.resume(returning: answer) }
        }
        return granted ? Permit(owner: self) : nil
    }

    /// The waiter `id` stops waiting (its time is up), unless it got a permit meanwhile.
    private func giveUp(_ id: UInt64) {
        let waiting = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            guard let index = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            switch s.waiters[index].waiter {
            case .granted: return nil
            case .arriving:
                s.waiters.remove(at: index)
                return nil
            case .waiting(let continuation):
                s.waiters.remove(at: index)
                return continuation
            }
        }
        waiting?.resume(returning: false)
    }

    /// A permit back: to the longest waiter, else to the pool.
    private func release() {
        let waiting = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            for index in s.waiters.indices {
                switch s.waiters[index].waiter {
                case .granted: continue
                case .arriving:
                    s.waiters[index].waiter = .granted
                    return nil
                case .waiting(let continuation):
                    s.waiters.remove(at: index)
                    return continuation
                }
            }
            s.free += 1
            return nil
        }
        waiting?.resume(returning: true)
    }
}
