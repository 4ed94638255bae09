import CMasq
import Datapath
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Reads the datapath's events (masq_events) into the `EventHub`, and turns the datapath's
/// reporting on while the hub has subscribers and off when the last one leaves.
///
/// The ring is read on a thread of its own: `ring_buffer__poll` blocks, and must not hold one of
/// the cooperative threads the API serves on. It polls every `pollInterval` (the datapath wakes
/// it earlier only when the ring fills up), so an event reaches subscribers within about that.
struct EventReader: Service {
    let datapath: Datapath
    let hub: EventHub
    let logger: Logger
    var pollInterval: Int32 = 100 // ms

    init(datapath: Datapath, hub: EventHub, logger: Logger) {
        self.datapath = datapath
        self.hub = hub
        var logger = logger
        logger[metadataKey: "service"] = "events"
        self.logger = logger
    }

    func run() async throws {
        let map = try await datapath.map(MASQ_MAP_EVENTS)
        let stop = StopFlag()
        let (hub, logger, interval) = (self.hub, self.logger, pollInterval)
        async let reading: Void = withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let thread = Thread {
                defer { done.resume() }
                Self.read(map, into: hub, until: stop, pollInterval: interval, logger: logger)
            }
            thread.name = "masq-events"
            thread.start()
        }
        await cancelWhenGracefulShutdown {
            for await enabled in hub.activity {
                do {
                    try await datapath.setEventsEnabled(enabled)
                    logger.debug("Datapath events switched", metadata: ["events.enabled": "\(enabled)"])
                } catch {
                    logger.error("Could not switch the datapath's events",
                                 metadata: ["events.enabled": "\(enabled)", "error": "\(error)"])
                }
            }
        }
        stop.set()
        await reading
        try? await datapath.setEventsEnabled(false)
    }

    /// The reading thread's loop: poll, publish, until `stop`.
    private static func read(_ map: BPFMap, into hub: EventHub, until stop: StopFlag, pollInterval: Int32, logger: Logger) {
        let reader: NATEventReader
        do {
            reader = try NATEventReader(map: map)
        } catch {
            logger.error("Cannot read the datapath's events; GET /v1/events shows masqd's own only", metadata: ["error": "\(error)"])
            return
        }
        defer { hub.datapathReaderStopped() }
        while !stop.isSet {
            do {
                try hub.datapathRead {
                    let polled = try reader.poll(timeoutMilliseconds: pollInterval)
                    if polled.unknown > 0 {
                        logger.debug("Datapath events of an unknown type skipped", metadata: ["events.skipped": "\(polled.unknown)"])
                    }
                    return polled.events
                }
            } catch {
                logger.warning("Reading the datapath's events failed", metadata: ["error": "\(error)"])
                usleep(UInt32(pollInterval) * 1000)
            }
        }
    }
}

/// A flag one thread sets and another polls.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    func set() { flag.store(true, ordering: .relaxed) }
    var isSet: Bool { flag.load(ordering: .relaxed) }
}
