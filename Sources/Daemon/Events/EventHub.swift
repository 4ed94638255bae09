import Datapath
@preconcurrency import Glibc
import Synchronization

/// Fans flow events out to any number of subscribers (`GET /v1/events`), each with a bounded
/// buffer of its own: a subscriber that reads slower than events come loses the ones its buffer
/// has no room for, counted and told in its stream at the place they went missing, and masqd's
/// memory stays bounded whatever the subscribers do. Only a GC pass waits for subscribers, and
/// only for a while (`publishPaced`); the datapath's events and masqd's deletions never do.
///
/// Two sources, one order: the datapath's events come through a ring that its reader reads
/// every 100 ms (`datapathRead`); masqd's deletions (`publish`) are held until the reader's
/// next read, so that a flow's `new`, written to the ring before masqd deleted it, is never told
/// after its `deleted`. The GC's events need no hold (`publishPaced`): a flow it expires was
/// idle for its lifetime, seconds, so its `new` was read long before.
public final class EventHub: Sendable {
    /// What a subscriber reads.
    public enum Item: Sendable, Equatable {
        case event(NATEvent)
        /// This many events matching the subscriber's filter were dropped here: its buffer was full.
        case lost(Int)
        /// Nothing happened for a while (`Subscription.heartbeat`).
        case heartbeat
    }

    /// Events one subscriber may have waiting, by default: more than the datapath's ring holds
    /// (MASQ_EVENTS_RING_BYTES, about 3000 events), so one read of a full ring never overflows
    /// the buffer of a subscriber that kept up.
    public static let defaultCapacity = 4096

    /// Subscribers at once (`GET /v1/events` answers 503 beyond): with `defaultCapacity`, about
    /// 30 MB of buffers if every one of them stopped reading.
    public static let maxSubscribers = 64

    private struct Subscriber {
        let filter: @Sendable (NATEvent) -> Bool
        let mailbox: Mailbox
    }

    private struct State {
        var subscribers: [UInt64: Subscriber] = [:]
        var nextID: UInt64 = 0
        /// The datapath's reads begun so far, while a reader is attached; nil without one.
        var readsBegun: UInt64?
        /// masqd's own events waiting for the read that begins after them: the reads begun
        /// when they were published, and the events.
        var held: [(after: UInt64, events: [NATEvent])] = []
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
        let mailbox = Mailbox(capacity: max(capacity, 2))
        let (id, first) = state.withLock { s in
            s.nextID += 1
            s.subscribers[s.nextID] = Subscriber(filter: filter, mailbox: mailbox)
            return (s.nextID, s.subscribers.count == 1)
        }
        count.add(1, ordering: .relaxed)
        if first { activitySink.yield(true) }
        return Subscription(hub: self, id: id, mailbox: mailbox)
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

    /// masqd's deletions (the API's): handed to every subscriber whose filter takes them, in
    /// order, after whatever the datapath wrote to its ring before now, that is after the
    /// reader's next read; at once without a reader. Each subscriber is woken once for the lot,
    /// after the hub's lock is released.
    public func publish(_ events: [NATEvent]) {
        guard hasSubscribers, !events.isEmpty else { return }
        let woken = state.withLock { s -> [(Mailbox, lost: Int)] in
            guard let begun = s.readsBegun else { return Self.offer(events, in: &s) }
            s.held.append((begun, events))
            return []
        }
        wake(woken)
    }

    /// One read of the datapath's ring by its reader: `read` returns the events it took, which
    /// are published, then masqd's own events held for a read begun after them (also when the
    /// read fails: what it would have brought stays in the ring for the next one).
    public func datapathRead(_ read: () throws -> [NATEvent]) rethrows {
        let number = state.withLock { s in
            let number = (s.readsBegun ?? 0) + 1
            s.readsBegun = number
            return number
        }
        var events: [NATEvent] = []
        defer {
            let woken = state.withLock { s in
                var ready = events
                while let first = s.held.first, first.after < number {
                    ready += first.events
                    s.held.removeFirst()
                }
                return ready.isEmpty || s.subscribers.isEmpty ? [] : Self.offer(ready, in: &s)
            }
            wake(woken)
        }
        events = try read()
    }

    /// A burst of events that need no hold (a GC pass's, which may expire tens of thousands of
    /// flows at once), handed out in chunks of half the smallest buffer, each once every
    /// subscriber has room for it: a subscriber that keeps reading loses none of a burst larger
    /// than its buffer. Blocks
    /// the calling thread while it waits (the GC runs on the blocking pool). A subscriber that
    /// takes nothing for `pacing.patience` is no longer waited for, nor is anyone once the
    /// waiting reached `pacing.budget`: those lose what their buffers cannot hold, as a slow
    /// subscriber does, and the GC goes on.
    public func publishPaced(_ events: [NATEvent], pacing: inout Pacing) {
        guard hasSubscribers, !events.isEmpty else { return }
        let chunk = max(1, state.withLock { s in s.subscribers.values.map(\.mailbox.capacity).min() ?? Self.defaultCapacity } / 2)
        var start = events.startIndex
        while start < events.endIndex {
            let end = min(start + chunk, events.endIndex)
            waitForRoom(end - start, pacing: &pacing)
            let woken = state.withLock { s in Self.offer(Array(events[start..<end]), in: &s) }
            wake(woken)
            start = end
        }
    }

    /// How one burst (a GC pass) waits for subscribers: how long a subscriber may take nothing
    /// before it is left behind, and how long the burst may wait in all.
    public struct Pacing: Sendable {
        public let patience: Duration
        public let budget: Duration
        fileprivate var waited = Duration.zero
        fileprivate var leftBehind: Set<UInt64> = []

        public init(patience: Duration = .seconds(1), budget: Duration = .seconds(5)) {
            self.patience = patience
            self.budget = budget
        }

        /// The subscribers this burst stopped waiting for.
        public var subscribersLeftBehind: Int { leftBehind.count }
    }

    /// Waits until each subscriber still waited for has room for `room` more events.
    private func waitForRoom(_ room: Int, pacing: inout Pacing) {
        let clock = ContinuousClock()
        // Per subscriber waited for: its fill when it last took something, and since when.
        var progress: [UInt64: (waiting: Int, since: ContinuousClock.Instant)] = [:]
        while pacing.waited < pacing.budget {
            let full = state.withLock { s in
                s.subscribers.compactMap { id, sub -> (UInt64, Int)? in
                    let waiting = sub.mailbox.waiting
                    return !pacing.leftBehind.contains(id) && waiting + room > sub.mailbox.capacity ? (id, waiting) : nil
                }
            }
            if full.isEmpty { return }
            let now = clock.now
            for (id, waiting) in full {
                if let last = progress[id], waiting >= last.waiting {
                    if now - last.since >= pacing.patience { pacing.leftBehind.insert(id) }
                } else {
                    progress[id] = (waiting, now)
                }
            }
            usleep(1000)
            pacing.waited += clock.now - now
        }
    }

    /// The datapath's reader stopped: what it held is told now, and from now on at once.
    public func datapathReaderStopped() {
        let woken = state.withLock { s in
            let held = s.held.flatMap(\.events)
            s.held.removeAll()
            s.readsBegun = nil
            return Self.offer(held, in: &s)
        }
        wake(woken)
    }

    /// Offers events to each subscriber whose filter takes them (under the hub's lock): the
    /// mailboxes to wake, each with the events it had no room for.
    private static func offer(_ events: [NATEvent], in s: inout State) -> [(Mailbox, lost: Int)] {
        s.subscribers.values.compactMap { sub in
            var offered = false, lost = 0
            for event in events where sub.filter(event) {
                offered = true
                if !sub.mailbox.offer(.event(event)) { lost += 1 }
            }
            return offered ? (sub.mailbox, lost) : nil
        }
    }

    /// Wakes the mailboxes an offer filled, after the hub's lock is released, and counts losses.
    private func wake(_ woken: [(Mailbox, lost: Int)]) {
        let lost = woken.reduce(0) { $0 + $1.lost }
        for (mailbox, _) in woken { mailbox.wake() }
        if lost > 0 { lostTotal.add(lost, ordering: .relaxed) }
    }

    /// One subscriber's bounded buffer, shared by the hub (which fills it) and the
    /// subscription (which drains it), and the doorbell that wakes the reader.
    fileprivate final class Mailbox: Sendable {
        private struct Buffer {
            var items: [Item] = []
            /// Events dropped since the last `.lost` that found room.
            var pendingLost = 0
        }

        let capacity: Int
        private let buffer = Mutex(Buffer())
        /// Rung when items arrive (the newest ring only), finished when the stream ends.
        fileprivate let doorbell: AsyncStream<Void>
        private let bell: AsyncStream<Void>.Continuation

        init(capacity: Int) {
            self.capacity = capacity
            (doorbell, bell) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        }

        /// Adds an item if the buffer has room, after a `.lost` for what went missing before;
        /// else counts it lost (an event) or drops it (a heartbeat: events are there). Oldest
        /// kept: what is dropped is the newest, so the stream stays in order with a gap.
        func offer(_ item: Item) -> Bool {
            buffer.withLock { b in
                if b.pendingLost > 0, b.items.count < capacity {
                    b.items.append(.lost(b.pendingLost))
                    b.pendingLost = 0
                }
                guard b.pendingLost == 0, b.items.count < capacity else {
                    if case .event = item { b.pendingLost += 1 }
                    return false
                }
                b.items.append(item)
                return true
            }
        }

        func wake() {
            bell.yield()
        }

        /// Items waiting to be taken.
        var waiting: Int { buffer.withLock { $0.items.count } }

        func finish() {
            bell.finish()
        }

        /// Everything waiting, ending with a `.lost` for events dropped since: a reader learns
        /// of a gap when it catches up, not only when a later event finds room.
        func takeAll() -> [Item] {
            buffer.withLock { b in
                defer { b.items.removeAll(keepingCapacity: true) }
                if b.pendingLost > 0 {
                    b.items.append(.lost(b.pendingLost))
                    b.pendingLost = 0
                }
                return b.items
            }
        }
    }

    /// One subscriber's stream. Unsubscribes when it goes away.
    public final class Subscription: Sendable {
        private let hub: EventHub
        private let id: UInt64
        fileprivate let mailbox: Mailbox

        fileprivate init(hub: EventHub, id: UInt64, mailbox: Mailbox) {
            self.hub = hub
            self.id = id
            self.mailbox = mailbox
        }

        /// Everything waiting, each time something comes: a reader that fell behind takes what
        /// piled up in one go (and writes it in one go). Ends after `cancel`, once drained.
        public var batches: Batches { Batches(subscription: self) }

        public struct Batches: AsyncSequence, Sendable {
            fileprivate let subscription: Subscription

            public struct AsyncIterator: AsyncIteratorProtocol {
                fileprivate let subscription: Subscription
                fileprivate var doorbell: AsyncStream<Void>.Iterator

                public mutating func next() async -> [Item]? {
                    while true {
                        let waiting = subscription.mailbox.takeAll()
                        if !waiting.isEmpty { return waiting }
                        guard await doorbell.next() != nil else {
                            let rest = subscription.mailbox.takeAll()
                            return rest.isEmpty ? nil : rest
                        }
                    }
                }
            }

            public func makeAsyncIterator() -> AsyncIterator {
                AsyncIterator(subscription: subscription, doorbell: subscription.mailbox.doorbell.makeAsyncIterator())
            }
        }

        /// Puts a `.heartbeat` in the stream (unless its buffer is full, when events are there).
        public func heartbeat() {
            if mailbox.offer(.heartbeat) { mailbox.wake() }
        }

        /// Ends the stream: a reader gets what is waiting, then nil.
        public func cancel() {
            mailbox.finish()
        }

        deinit {
            mailbox.finish()
            hub.unsubscribe(id)
        }
    }
}
