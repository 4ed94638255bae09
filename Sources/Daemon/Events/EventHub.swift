import Datapath
import Synchronization

/// Fans flow events out to any number of subscribers (`GET /v1/events`), each with a bounded
/// buffer of its own: a subscriber that reads slower than events come loses the ones its buffer
/// has no room for, counted and told in its stream at the place they went missing, and masqd's
/// memory stays bounded whatever the subscribers do. Publishing never waits for a subscriber.
public final class EventHub: Sendable {
    /// What a subscriber reads.
    public enum Item: Sendable, Equatable {
        case event(NATEvent)
        /// This many events matching the subscriber's filter were dropped here: its buffer was full.
        case lost(Int)
        /// Nothing happened for a while (`Subscription.heartbeat`).
        case heartbeat
    }

    /// Events one subscriber may have waiting, by default.
    public static let defaultCapacity = 1024

    private struct Subscriber {
        let filter: @Sendable (NATEvent) -> Bool
        let continuation: AsyncStream<Item>.Continuation
        /// Events dropped since the last `.lost` that found room.
        var pendingLost = 0
    }

    private struct State {
        var subscribers: [UInt64: Subscriber] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())
    private let count = Atomic<Int>(0)
    private let lostTotal = Atomic<Int>(0)
    /// Whether anyone listens, each time that changes (the newest only): the datapath reports
    /// events only then.
    public let activity: AsyncStream<Bool>
    private let activitySink: AsyncStream<Bool>.Continuation

    public init() {
        (activity, activitySink) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Whether anyone listens: callers skip building events otherwise.
    public var hasSubscribers: Bool { count.load(ordering: .relaxed) > 0 }

    /// Subscribers now.
    public var subscribers: Int { count.load(ordering: .relaxed) }

    /// Events subscribers lost to full buffers, over the daemon's life.
    public var lost: Int { lostTotal.load(ordering: .relaxed) }

    /// A new subscriber to the events `filter` takes. It stays subscribed while the returned
    /// value lives (or until `cancel`).
    public func subscribe(capacity: Int = EventHub.defaultCapacity,
                          filter: @escaping @Sendable (NATEvent) -> Bool) -> Subscription {
        // Oldest kept: what is dropped is the newest, so the stream stays in order with a gap.
        let (stream, continuation) = AsyncStream.makeStream(of: Item.self, bufferingPolicy: .bufferingOldest(max(capacity, 2)))
        let (id, first) = state.withLock { s in
            s.nextID += 1
            s.subscribers[s.nextID] = Subscriber(filter: filter, continuation: continuation)
            return (s.nextID, s.subscribers.count == 1)
        }
        count.add(1, ordering: .relaxed)
        if first { activitySink.yield(true) }
        continuation.onTermination = { [weak self] _ in self?.unsubscribe(id) }
        return Subscription(hub: self, id: id, items: stream, continuation: continuation)
    }

    fileprivate func unsubscribe(_ id: UInt64) {
        let (removed, last) = state.withLock { s in
            let removed = s.subscribers.removeValue(forKey: id) != nil
            return (removed, removed && s.subscribers.isEmpty)
        }
        guard removed else { return }
        count.subtract(1, ordering: .relaxed)
        if last { activitySink.yield(false) }
    }

    /// Hands `events` to every subscriber whose filter takes them, in order.
    public func publish(_ events: [NATEvent]) {
        guard hasSubscribers, !events.isEmpty else { return }
        var lostNow = 0
        state.withLock { s in
            for id in s.subscribers.keys {
                guard var sub = s.subscribers[id] else { continue }
                for event in events where sub.filter(event) {
                    if sub.pendingLost > 0 {
                        guard Self.enqueued(sub.continuation.yield(.lost(sub.pendingLost))) else {
                            sub.pendingLost += 1
                            lostNow += 1
                            continue
                        }
                        sub.pendingLost = 0
                    }
                    if !Self.enqueued(sub.continuation.yield(.event(event))) {
                        sub.pendingLost += 1
                        lostNow += 1
                    }
                }
                s.subscribers[id] = sub
            }
        }
        if lostNow > 0 { lostTotal.add(lostNow, ordering: .relaxed) }
    }

    private static func enqueued(_ result: AsyncStream<Item>.Continuation.YieldResult) -> Bool {
        if case .enqueued = result { return true }
        return false
    }

    /// One subscriber's stream. Unsubscribes when it goes away.
    public final class Subscription: Sendable {
        private let hub: EventHub
        private let id: UInt64
        public let items: AsyncStream<Item>
        private let continuation: AsyncStream<Item>.Continuation

        fileprivate init(hub: EventHub, id: UInt64, items: AsyncStream<Item>, continuation: AsyncStream<Item>.Continuation) {
            self.hub = hub
            self.id = id
            self.items = items
            self.continuation = continuation
        }

        /// Puts a `.heartbeat` in the stream (unless its buffer is full, when events are there).
        public func heartbeat() {
            continuation.yield(.heartbeat)
        }

        /// Ends the stream: a reader waiting on it gets nil.
        public func cancel() {
            continuation.finish()
        }

        deinit {
            continuation.finish()
            hub.unsubscribe(id)
        }
    }
}
