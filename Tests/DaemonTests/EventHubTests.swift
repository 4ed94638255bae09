import Foundation
import NetworkTypes
import Testing
@testable import Daemon
@testable import Datapath

@Suite("Event hub")
struct EventHubTests {
    private func event(sport: UInt16, proto: L4Protocol = .udp) -> NATEvent {
        NATEvent(kind: .created(keptPort: true, candidates: 1), time: 0, proto: proto, flow: .masquerade,
                 src: .v4(IPv4Address(10, 0, 1, 5)), sport: sport, dst: .v4(IPv4Address(192, 0, 2, 1)), dport: 53,
                 translatedSrc: .v4(IPv4Address(192, 0, 2, 10)), translatedSport: sport, ifindex: 2)
    }

    /// Reads what is waiting, one batch (it is there already).
    private func take(from subscription: EventHub.Subscription) async -> [EventHub.Item] {
        var iterator = subscription.batches.makeAsyncIterator()
        return await iterator.next() ?? []
    }

    @Test("every subscriber gets the events its filter takes, in order")
    func fanOutWithFilters() async {
        let hub = EventHub()
        let all = hub.subscribe { _ in true }
        let tcp = hub.subscribe { $0.proto == .tcp }
        hub.publish([event(sport: 1), event(sport: 2, proto: .tcp), event(sport: 3)])
        #expect(await take(from: all) == [.event(event(sport: 1)), .event(event(sport: 2, proto: .tcp)), .event(event(sport: 3))])
        #expect(await take(from: tcp) == [.event(event(sport: 2, proto: .tcp))])
    }

    @Test("a subscriber whose buffer is full loses the newest events, and is told how many where they went missing, as soon as it reads")
    func slowSubscriberLosesAndIsTold() async {
        let hub = EventHub()
        let slow = hub.subscribe(capacity: 4) { _ in true }
        hub.publish((1...10).map { event(sport: $0) })
        #expect(hub.lost == 6)
        #expect(await take(from: slow) == (1...4).map { .event(event(sport: $0)) } + [.lost(6)])
        hub.publish([event(sport: 11)])
        #expect(await take(from: slow) == [.event(event(sport: 11))])
        // Lost while the reader had room again: the gap is where it was.
        hub.publish((12...17).map { event(sport: $0) })
        hub.publish([event(sport: 18)])
        #expect(await take(from: slow) == (12...15).map { .event(event(sport: $0)) } + [.lost(3)])
    }

    @Test("a reader takes everything waiting in one batch, waits for more, and ends after cancel once drained")
    func batchesDrainThenWait() async {
        let hub = EventHub()
        let subscription = hub.subscribe { _ in true }
        var batches = subscription.batches.makeAsyncIterator()
        hub.publish((1...3).map { event(sport: $0) })
        hub.publish([event(sport: 4)])
        #expect(await batches.next() == (1...4).map { .event(event(sport: $0)) })
        // Nothing waiting: a reader waits until the next publish wakes it.
        let waiter = Task {
            var batches = subscription.batches.makeAsyncIterator()
            return await batches.next()
        }
        try? await Task.sleep(for: .milliseconds(50))
        hub.publish([event(sport: 5)])
        #expect(await waiter.value == [.event(event(sport: 5))])
        // Cancelled with items waiting: they come first, then the end.
        hub.publish([event(sport: 6)])
        subscription.heartbeat()
        subscription.cancel()
        #expect(await batches.next() == [.event(event(sport: 6)), .heartbeat])
        #expect(await batches.next() == nil)
    }

    @Test("masqd's own events wait for the datapath's next read, so a flow's new comes before its deletion; without a reader they go at once")
    func ownEventsAfterDatapathRead() async {
        let hub = EventHub()
        let all = hub.subscribe { _ in true }
        let deleted = NATEvent(kind: .deleted, time: 0, proto: .udp, flow: .masquerade, src: .v4(IPv4Address(10, 0, 1, 5)),
                               sport: 1, dst: .v4(IPv4Address(192, 0, 2, 1)), dport: 53, translatedSrc: nil,
                               translatedSport: 1, ifindex: 2)
        // A read under way when masqd deletes the flow: its new may be written after the read
        // took the ring, so the deletion waits for the read after it.
        hub.datapathRead {
            hub.publish([deleted])
            return []
        }
        hub.datapathRead { [event(sport: 1)] }
        #expect(await take(from: all) == [.event(event(sport: 1)), .event(deleted)])
        // The reader gone: what it held goes, and later events go at once.
        hub.datapathRead { [] }
        hub.publish([deleted])
        hub.datapathReaderStopped()
        #expect(await take(from: all) == [.event(deleted)])
        hub.publish([deleted])
        #expect(await take(from: all) == [.event(deleted)])
    }

    @Test("a burst larger than a buffer (a GC pass's) is paced: a subscriber that keeps reading gets all of it, one that takes nothing is left behind and told what it lost")
    func pacedBurst() async {
        let hub = EventHub()
        let reading = hub.subscribe { _ in true }
        let stalled = hub.subscribe { _ in true }
        let burst = (1...5000).map { event(sport: UInt16($0)) }
        let reader = Task {
            var got: [EventHub.Item] = []
            for await batch in reading.batches { got += batch }
            return got
        }
        // publishPaced blocks its thread while it waits, as the GC's blocking-pool thread does.
        // Patient enough for a reader starved by the tests running beside this one.
        let pacing = await withCheckedContinuation { (done: CheckedContinuation<EventHub.Pacing, Never>) in
            Thread {
                var pacing = EventHub.Pacing(patience: .seconds(10), budget: .seconds(120))
                hub.publishPaced(burst, pacing: &pacing)
                done.resume(returning: pacing)
            }.start()
        }
        reading.cancel()
        #expect(await reader.value == burst.map { .event($0) })
        #expect(pacing.subscribersLeftBehind == 1)
        // Two chunks of half a buffer fit before it was left behind.
        let kept = EventHub.defaultCapacity
        #expect(await take(from: stalled) == burst.prefix(kept).map { .event($0) } + [.lost(burst.count - kept)])
        #expect(hub.lost == burst.count - kept)
    }

    @Test("one read of a full datapath ring (about 3000 events) fits the buffer of a subscriber that kept up")
    func fullRingFits() async {
        let hub = EventHub()
        let subscription = hub.subscribe { _ in true }
        let burst = (1...3000).map { event(sport: UInt16($0)) }
        hub.datapathRead { burst }
        #expect(await take(from: subscription) == burst.map { .event($0) })
        #expect(hub.lost == 0)
    }

    @Test("the datapath is asked to report while anyone listens, and no longer once the last subscriber is gone")
    func activityFollowsSubscribers() async {
        let hub = EventHub()
        var activity = hub.activity.makeAsyncIterator()
        var first: EventHub.Subscription? = hub.subscribe { _ in true }
        #expect(await activity.next() == true)
        var second: EventHub.Subscription? = hub.subscribe { _ in true }
        #expect(hub.hasSubscribers)
        first = nil
        #expect(hub.hasSubscribers)
        second = nil
        #expect(!hub.hasSubscribers)
        #expect(await activity.next() == false)
        _ = (first, second)
    }
}
