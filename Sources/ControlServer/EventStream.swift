import API
import Daemon
import Datapath
import Foundation
import NIOCore

extension APIHandlers {
    /// After this long without an event a stream gets a heartbeat line: an idle subscriber's
    /// connection stays open (the idle timeout counts writes), and a gone one is noticed.
    static let eventHeartbeat = Duration.seconds(10)

    /// Streams events as they happen, one NDJSON line each, until the client goes away (or the
    /// query's timeout ends the stream, normally). The
    /// subscription's buffer is bounded (`EventHub`): a client that reads slowly gets `lost`
    /// lines where events went missing, and costs masqd no more than its buffer.
    func eventStream(_ query: EventsQuery, to writer: ResponseBodyWriter) async throws {
        let subscription = events.subscribe { event in
            query.matches(type: event.type, family: event.family, proto: event.proto, original: event.original)
        }
        var ndjson = EventNDJSON()
        var names = DeviceNames()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    try await Task.sleep(for: Self.eventHeartbeat)
                    subscription.heartbeat()
                }
            }
            if let timeout = query.timeout {
                group.addTask {
                    try await Task.sleep(for: .seconds(timeout))
                    subscription.cancel()
                }
            }
            defer { group.cancelAll() }
            // Heartbeats queue behind events; one is written only after a quiet interval.
            var lastWrite = ContinuousClock.now
            // Whatever waits is written in one go: a write per line held delivery to a few
            // thousand events a second.
            for await batch in subscription.batches {
                var buffer = ByteBuffer()
                for item in batch {
                    let line: FlowEvent
                    switch item {
                    case .event(let event): line = Self.flowEvent(event, names: &names)
                    case .lost(let count): line = FlowEvent(type: .lost, time: Date(), count: count)
                    case .heartbeat:
                        guard buffer.readableBytes == 0, ContinuousClock.now - lastWrite >= Self.eventHeartbeat else { continue }
                        line = FlowEvent(type: .heartbeat, time: Date())
                    }
                    ndjson.write(line, to: &buffer)
                }
                guard buffer.readableBytes > 0 else { continue }
                try await writer.write(buffer)
                lastWrite = ContinuousClock.now
            }
        }
    }

    /// The API's view of an event.
    static func flowEvent(_ event: NATEvent, names: inout DeviceNames) -> FlowEvent {
        let original = event.original
        var line = FlowEvent(type: event.type, time: wallClock(bootTime: event.time), family: event.family,
                             proto: event.proto, kind: event.flowKind, original: original,
                             device: names[event.ifindex], ifindex: event.ifindex)
        if let src = event.translatedSrc {
            line.translated = FlowTuple(src: src, sport: event.translatedSport, dst: original.dst, dport: original.dport)
        }
        switch event.kind {
        case .created(let kept, let candidates):
            line.keptPort = kept
            line.candidates = candidates
        case .allocationFailed(let reason, let candidates):
            line.reason = reason.label
            line.candidates = candidates
        case .dropped(let reason, let egress):
            line.reason = reason.label
            line.direction = egress ? .egress : .ingress
        case .expired(let state):
            line.state = state
        case .repaired, .deleted:
            break
        }
        return line
    }

    /// A CLOCK_BOOTTIME timestamp (ns) as wall-clock time.
    static func wallClock(bootTime: UInt64) -> Date {
        let now = NATEntries.bootTimeNow()
        return Date().addingTimeInterval(-NATEntries.seconds(now, since: bootTime))
    }
}

extension NATEvent {
    var type: FlowEvent.EventType {
        switch kind {
        case .created: .new
        case .allocationFailed: .allocationFailed
        case .dropped: .drop
        case .expired: .expired
        case .repaired: .repaired
        case .deleted: .deleted
        }
    }

    var family: IPFamily { src.family }

    var original: FlowTuple { FlowTuple(src: src, sport: sport, dst: dst, dport: dport) }

    var flowKind: ConntrackEntry.Kind {
        switch flow {
        case .masquerade: .masquerade
        case .host: .host
        case .inbound: .inbound
        }
    }
}
