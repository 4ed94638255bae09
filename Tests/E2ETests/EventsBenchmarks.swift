// Flow events against a real masqd, for benchmarks/README.md: the events per second masqd
// delivers to one subscriber, and the UDP packet rate with and without 10 subscribers that
// never read (same run, alternating). Not part of the normal run: a measurement on a shared
// machine is no pass/fail criterion. Run with
//
//     MASQ_BENCH=1 swift test --filter EventsBenchmarks

import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

@Suite("flow events benchmarks", .serialized, .enabled(if: ProcessInfo.processInfo.environment["MASQ_BENCH"] != nil))
struct EventsBenchmarks {
    /// Sends one datagram from source port `sport` to each of `count` destination ports from
    /// `first` (each a new flow, so a new event), as fast as the socket takes them; prints the
    /// seconds it took. Closed ports answer with ICMP errors, which masq translates back.
    static let burst = """
        import socket, sys, time
        dst, sport, first, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", sport))
        start = time.monotonic()
        for i in range(count):
            s.sendto(b"x", (dst, first + i))
            if rate > 0:
                time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
        print("%.3f" % (time.monotonic() - start))
        """

    /// Counts a growing NDJSON file's `new` events and the losses its `lost` lines report,
    /// reading only what was appended since the last call.
    final class EventCounter {
        let path: String
        private var offset: UInt64 = 0
        private var partial = Data()
        private(set) var new = 0
        private(set) var lost = 0

        init(path: String) { self.path = path }

        func update() {
            guard let handle = FileHandle(forReadingAtPath: path) else { return }
            defer { try? handle.close() }
            try? handle.seek(toOffset: offset)
            let data = handle.readDataToEndOfFile()
            offset += UInt64(data.count)
            partial.append(data)
            guard let end = partial.lastIndex(of: UInt8(ascii: "\n")) else { return }
            for line in partial[..<end].split(separator: UInt8(ascii: "\n")) {
                guard let json = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { continue }
                switch json["type"] as? String {
                case "new": new += 1
                case "lost": lost += json["count"] as? Int ?? 0
                default: break
                }
            }
            partial = Data(partial[partial.index(after: end)...])
        }
    }

    /// Packets the outside host's eth0 received so far.
    private func outsideRx(_ sandbox: Sandbox) async throws -> Int {
        let out = try await sandbox.sh(["ip", "-n", sandbox.outside, "-s", "-j", "link", "show", "eth0"]).stdout
        let links = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]])
        let stats = try #require(links.first?["stats64"] as? [String: Any])
        return try #require((stats["rx"] as? [String: Any])?["packets"] as? Int)
    }

    @Test("events/s delivered to one subscriber; UDP packets/s with and without 10 idle subscribers")
    func eventsAndForwarding() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            let masqd = try await sandbox.startMasqd(mode: .tcx, overrides: ["--nat-max-entries": "524288"])
            let pod1 = sandbox.pods[0], pod2 = sandbox.pods[1]

            // 1. One subscriber (curl, reading as fast as it can) while rounds of 20000 new flows
            // come, as fast as a socket sends them and paced. A round ends when no event came
            // for a second; the datapath's own losses (ring full) are in its counter.
            _ = try sandbox.spawn("subscriber", ["curl", "-sN", "--unix-socket", sandbox.socketPath, "http://masqd/v1/events?types=new"])
            try await sandbox.waitForEventSubscribers(1)
            let counter = EventCounter(path: "\(sandbox.dir)/subscriber.out")
            let n = 20_000
            for (round, rate) in [0, 0, 20_000, 10_000, 5_000].enumerated() {
                counter.update()
                let (new, lost) = (counter.new, counter.lost)
                let ringLost = metric(try await sandbox.metrics(), "masq_datapath_events_lost_total") ?? 0
                let started = ContinuousClock.now
                let burst = try await Command.run(sandbox.nsenter(pod1, ["python3", "-c", Self.burst, Sandbox.outsideIP, String(45000 + round),
                                                                         "1024", String(n), String(rate)]),
                                                  timeout: .seconds(120))
                #expect(burst.succeeded, "\(burst)")
                var lastChange = ContinuousClock.now, seen = counter.new + counter.lost
                while ContinuousClock.now - lastChange < .seconds(1) && ContinuousClock.now - started < .seconds(120) {
                    try await Task.sleep(for: .milliseconds(50))
                    counter.update()
                    if counter.new + counter.lost != seen { seen = counter.new + counter.lost; lastChange = ContinuousClock.now }
                }
                let took = lastChange - started
                let seconds = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
                let delivered = counter.new - new
                let sendSeconds = Double(burst.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? .infinity
                let ringLostNow = metric(try await sandbox.metrics(), "masq_datapath_events_lost_total") ?? 0
                print(String(format: "events: %d new flows sent at %.0f/s (%@): one subscriber got %d in %.2f s = %.0f events/s; lost: %d by the subscriber's buffer, %.0f in the ring",
                             n, Double(n) / sendSeconds, rate == 0 ? "unpaced" : "paced \(rate)/s", delivered, seconds,
                             Double(delivered) / seconds, counter.lost - lost, ringLostNow - ringLost))
            }

            // 2. UDP 64-byte packets/s through masq (iperf3 in pod 1, counted where they arrive),
            // while pod 2 opens 1000 new flows a second (events that the subscribers get, or
            // lose): without subscribers, then with 10 that never read, in turn.
            _ = try sandbox.spawn("iperf3", sandbox.nsenter(sandbox.outside, ["iperf3", "-s", "-B", Sandbox.outsideIP, "-p", "5201"]))
            _ = try sandbox.spawn("background", sandbox.nsenter(pod2, ["python3", "-c", Self.burst, Sandbox.outsideIP, "46000", "1024", "60000", "1000"]))
            try await Task.sleep(for: .seconds(1))
            var stuck: [Int32] = []
            defer { for fd in stuck { close(fd) } }
            var rates: [String: [Double]] = [:]
            let rssBefore = try rssKiB(masqd.processIdentifier)
            for phase in ["none", "10 idle", "none", "10 idle", "none", "10 idle"] {
                if phase == "none" {
                    for fd in stuck { close(fd) }
                    stuck = []
                    try await sandbox.waitForEventSubscribers(1)
                } else {
                    for _ in 0..<10 { stuck.append(try stuckSubscriber(sandbox.socketPath)) }
                    try await sandbox.waitForEventSubscribers(11)
                }
                let before = try await outsideRx(sandbox)
                let iperf = try await Command.run(sandbox.nsenter(pod1, ["iperf3", "-c", Sandbox.outsideIP, "-p", "5201", "-u", "-l", "64",
                                                                        "-b", "0", "-t", "5", "-J"]), timeout: .seconds(30))
                #expect(iperf.succeeded, "\(iperf)")
                let json = try #require(try JSONSerialization.jsonObject(with: Data(iperf.stdout.utf8)) as? [String: Any])
                let sent = try #require(((json["end"] as? [String: Any])?["sum_sent"] as? [String: Any])?["seconds"] as? Double)
                let pps = Double(try await outsideRx(sandbox) - before) / sent
                rates[phase, default: []].append(pps)
                print(String(format: "events: UDP 64-byte packets/s with %@ subscribers: %.0f", phase, pps))
            }
            let rssAfter = try rssKiB(masqd.processIdentifier)
            for phase in ["none", "10 idle"] {
                let sorted = rates[phase, default: []].sorted()
                print(String(format: "events: UDP packets/s, %@: median %.0f of %@", phase, sorted[sorted.count / 2],
                             sorted.map { String(format: "%.0f", $0) }.joined(separator: ", ")))
            }
            print("events: masqd RSS \(rssBefore) KiB before the UDP phases, \(rssAfter) KiB after")
        }
    }
}
